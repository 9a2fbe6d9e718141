"""Split a COCO instances JSON into train/val files by image id (atomic writes).

    python tools/split_coco.py --ann data/trainval.json --val-ids 15 16 17 --out-dir splits/
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from condinst.io import atomic_write_json  # noqa: E402


def split(data: dict, val_ids: set[int]) -> tuple[dict, dict]:
    unknown = val_ids - {im["id"] for im in data["images"]}
    if unknown:
        raise SystemExit(f"error: image ids {sorted(unknown)} are not in the dataset")
    parts = []
    for keep in (lambda i: i not in val_ids, lambda i: i in val_ids):
        part = {k: v for k, v in data.items() if k not in ("images", "annotations")}
        part["images"] = [im for im in data["images"] if keep(im["id"])]
        part["annotations"] = [a for a in data["annotations"] if keep(a["image_id"])]
        parts.append(part)
    return parts[0], parts[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ann", required=True)
    p.add_argument("--val-ids", type=int, nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args()
    train, val = split(json.loads(Path(args.ann).read_text()), set(args.val_ids))
    out = Path(args.out_dir)
    atomic_write_json(out / "train.json", train)
    atomic_write_json(out / "val.json", val)
    print(f"train: {len(train['images'])} images / {len(train['annotations'])} instances; "
          f"val: {len(val['images'])} images / {len(val['annotations'])} instances -> {out}")


if __name__ == "__main__":
    main()
