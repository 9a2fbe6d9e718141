"""Small synthetic workspaces for the interop tests: disks, rings, categories with an id gap, a crowd region."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from app.store.workspace import Workspace

H, W = 60, 80


def disk(cy: int, cx: int, radius: int, hole: int = 0) -> np.ndarray:
    """(H, W) bool disk, a ring when ``hole`` > 0."""
    yy, xx = np.mgrid[:H, :W]
    dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return (dist2 < radius ** 2) & (dist2 >= hole ** 2)


def build_workspace(root: Path, images: int, masks: Callable[[int], list], crowd: tuple) -> Workspace:
    """Categories date=3 and fig=7; ``images`` random images named img<k>.png with the instances
    ``masks(k)`` -> [(category_id, mask)]; ``crowd`` = (category_id, mask) on image 1 as a crowd region."""
    workspace = Workspace.open(root)
    workspace.add_category("date", 3)
    workspace.add_category("fig", 7)
    rng = np.random.default_rng(0)
    for k in range(images):
        image_id = workspace.add_image(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), f"img{k}.png")
        for category_id, mask in masks(k):
            workspace.add_instance(image_id, category_id, mask)
    workspace.add_instance(1, crowd[0], crowd[1], meta={"iscrowd": 1})
    return workspace
