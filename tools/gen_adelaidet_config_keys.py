"""Regenerate condinst/adelaidet_config_keys.txt: the dotted key paths of the detectron2 + AdelaiDet
config schema, read from full `cfg.dump()` files (the union over all dumps given).

Usage: python tools/gen_adelaidet_config_keys.py [DUMP.yaml ...]
Without arguments it reads the parity dumps in ../shared/reference/parity/{tiny,tiny_sem,bifpn_tiny}.
Both section paths (e.g. MODEL.FCOS) and leaf paths (MODEL.FCOS.NMS_TH) are written, one per line, sorted;
`_BASE_` is added because detectron2 accepts it at the top level of every YAML file.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "condinst" / "adelaidet_config_keys.txt"
DEFAULT_DUMPS = [
    ROOT.parent / "shared" / "reference" / "parity" / v / "config.yaml" for v in ("tiny", "tiny_sem", "bifpn_tiny")
]


def dotted_paths(node: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        out.add(path)
        if isinstance(value, dict):
            out |= dotted_paths(value, path + ".")
    return out


def main(argv: list[str]) -> None:
    dumps = [Path(a) for a in argv] or DEFAULT_DUMPS
    keys = {"_BASE_"}
    for dump in dumps:
        with open(dump, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if not isinstance(data, dict):
            raise SystemExit(f"{dump}: not a mapping")
        keys |= dotted_paths(data)
    OUT.write_text("".join(k + "\n" for k in sorted(keys)), encoding="utf-8")
    print(f"wrote {len(keys)} keys from {len(dumps)} dump(s) to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:])
