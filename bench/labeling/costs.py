"""What an annotator's actions cost: the action kinds, their seconds, and one image's log.

Seconds per action are assumptions stated here, not measured people: our browser runs measure the
server's answer to an action (bench/editor_latency.py, bench/editor_session.py: well under a
second), so the time a person needs to aim and decide dominates. The values follow the usual
figures of interactive-segmentation studies (a polygon vertex ~1.3 s in CVAT-style drawing, a
corrective click ~1.5 s including looking at the new proposal, a drag ~2.5 s, a key ~0.6 s).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

SECONDS = {
    "select": 1.0,       # a click that selects an instance
    "refine_click": 1.5,  # a positive / negative click-to-refine click (aim + look at the proposal)
    "vertex": 1.3,       # one polygon vertex
    "stroke": 2.5,       # one brush / eraser drag
    "key": 0.6,          # Enter, Esc, Delete, Undo, a class key, a tool key, "resolve overlaps"
    "slider": 1.5,       # move the score-threshold slider
    "review": 1.0,       # mark the image reviewed (look over it once more)
}


@dataclass
class ImageLog:
    """What the annotator did on one image."""

    name: str
    objects: int
    actions: Counter = field(default_factory=Counter)   # kind -> count (kinds of SECONDS)
    outcomes: Counter = field(default_factory=Counter)  # accepted, class_key, refined, brushed, polygon, extra_deleted, ...
    complete: bool = False   # every object at IoU >= the target with the right class, nothing extra
    machine_s: float = 0.0   # wall time of the service calls
    steps: list = field(default_factory=list)  # (what was made right, its actions), in the order done

    def step(self, what: str, since: int) -> None:
        """Book the actions taken since the total was `since` to `what` (e.g. "false positive")."""
        if self.total > since or what.startswith("accepted"):
            self.steps.append((what, self.total - since))

    def add(self, kind: str, count: int = 1) -> None:
        if kind not in SECONDS:
            raise KeyError(f"unknown action kind {kind!r}")
        self.actions[kind] += count

    @property
    def total(self) -> int:
        return sum(self.actions.values())

    @property
    def seconds(self) -> float:
        return sum(SECONDS[kind] * n for kind, n in self.actions.items())

    def to_dict(self) -> dict:
        return {"name": self.name, "objects": self.objects, "actions": self.total, "seconds": round(self.seconds, 1),
                "by_kind": dict(self.actions), "outcomes": dict(self.outcomes), "complete": self.complete,
                "machine_s": round(self.machine_s, 2),
                "steps": [list(step) for step in self.steps]}
