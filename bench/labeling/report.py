"""Tables, summary and plot of `bench.labeling_loop` runs (plain dicts in, text / PNG out)."""
from __future__ import annotations

from pathlib import Path

from bench.common import format_table


def _totals(images: list[dict]) -> dict:
    n, objects, actions = len(images), sum(i["objects"] for i in images), sum(i["actions"] for i in images)
    seconds = sum(i.get("seconds", 0.0) for i in images)
    return {"images": n, "objects": objects, "actions": actions,
            "actions_per_image": actions / n if n else 0.0, "actions_per_object": actions / objects if objects else 0.0,
            "seconds_per_object": seconds / objects if objects else 0.0}


def summarize(runs: list[dict]) -> dict:
    """Per strategy: totals, per-round rows, and the ratio of its actions to the polygon baseline's."""
    polygons = next((r for r in runs if r["strategy"] == "polygons"), None)
    base = _totals(polygons["images"])["actions_per_object"] if polygons else None
    out = {}
    for run in runs:
        totals = _totals(run["images"])
        totals["vs_polygons"] = totals["actions_per_object"] / base if base else None
        totals["complete_images"] = sum(bool(i.get("complete", True)) for i in run["images"])
        if run["strategy"] == "polygons":  # the same drawing with the class chosen once per image, not per object
            sticky = totals["actions"] - totals["objects"] + totals["images"]
            totals["actions_per_object_class_once_per_image"] = sticky / max(totals["objects"], 1)
        rows = []
        for r in run.get("rounds", []):
            row = {"round": r["round"], **_totals(r["images"]), "ap": r.get("ap"), "ap_agnostic": r.get("ap_agnostic")}
            if "retrain" in r:
                row.update(retrain_wall_s=r["retrain"]["wall_s"], retrain_cpu_s=r["retrain"]["cpu_s"],
                           retrain_state=r["retrain"]["state"])
            rows.append(row)
        totals["rounds"] = rows
        if len(rows) >= 2 and rows[0]["actions_per_object"]:
            totals["last_vs_first_round"] = rows[-1]["actions_per_object"] / rows[0]["actions_per_object"]
        out[run["strategy"]] = totals
    return out


def print_tables(runs: list[dict], summary: dict, whole: dict) -> None:
    pct = "{:.1f}"
    rows = []
    for name, s in summary.items():
        for r in s["rounds"]:
            rows.append({"strategy": name, **r, "ap": None if r["ap"] is None else 100 * r["ap"],
                         "ap_agnostic": None if r["ap_agnostic"] is None else 100 * r["ap_agnostic"]})
    if rows:
        print(format_table(rows, [("strategy", "strategy", "{}"), ("round", "round", "{}"), ("images", "images", "{}"),
                                  ("objects", "objects", "{}"), ("actions/image", "actions_per_image", pct),
                                  ("actions/object", "actions_per_object", "{:.2f}"),
                                  ("s/object", "seconds_per_object", pct), ("mask AP", "ap", pct),
                                  ("mask AP agnostic", "ap_agnostic", pct), ("retrain wall s", "retrain_wall_s", "{}"),
                                  ("retrain CPU s", "retrain_cpu_s", "{}")]))
        print()
    print(format_table([{"strategy": name, **s} for name, s in summary.items()],
                       [("strategy", "strategy", "{}"), ("images", "images", "{}"), ("objects", "objects", "{}"),
                        ("actions", "actions", "{}"), ("actions/image", "actions_per_image", pct),
                        ("actions/object", "actions_per_object", "{:.2f}"), ("s/object", "seconds_per_object", pct),
                        ("x polygons", "vs_polygons", "{:.2f}"), ("complete", "complete_images", "{}")]))
    sticky = summary.get("polygons", {}).get("actions_per_object_class_once_per_image")
    if sticky:
        print(f"\npolygons with the class chosen once per image (as the loop's polygons are counted): "
              f"{sticky:.2f} actions per object")
    print(f"\npolygons over the whole set: train {whole['train']} actions / {whole['train_objects']} objects "
          f"({whole['train'] / max(whole['train_objects'], 1):.2f} per object), val {whole['val']} / "
          f"{whole['val_objects']} ({whole['val'] / max(whole['val_objects'], 1):.2f})")


def plot(runs: list[dict], path: Path, k: int, dataset: str = "kudzu") -> None:
    """Actions per image (mean of each round of k images) against images labeled, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for run in runs:
        counts = [i["actions"] for i in run["images"]]
        xs, ys = [], []
        for start in range(0, len(counts), k):
            chunk = counts[start:start + k]
            xs.append(start + len(chunk))
            ys.append(sum(chunk) / len(chunk))
        ax.plot(xs, ys, marker="o", label=run["strategy"].replace("_", " "))
    ax.set_xlabel("images labeled")
    ax.set_ylabel(f"actions per image (mean of each {k})")
    ax.set_title(f"Labeling {dataset}: CondInst in the loop vs drawing polygons")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
