"""What a run needs to continue exactly: the RNG states of every library and the checkpoint pointer.

`last_checkpoint` in the output folder names the newest checkpoint (written atomically); a resumed run
restores every RNG from the checkpoint so that on CPU it ends bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from condinst.checkpoint import CheckpointError
from condinst.io import atomic_write_text

LAST_CHECKPOINT = "last_checkpoint"
FINAL_CHECKPOINT = "model_final.pth"


# ---- RNG state ---------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch CPU and this process's GPU, as plain containers and tensors
    (loadable with torch.load(weights_only=True))."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss},
        "numpy": {"kind": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        # This process's GPU only (get_rng_state_all would open a context on every GPU of the node).
        "cuda": [torch.cuda.get_rng_state(torch.cuda.current_device())] if torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0], torch.cuda.current_device())


# ---- checkpoints --------------------------------------------------------------------------------------

def checkpoint_name(iteration: int) -> str:
    return f"model_{iteration:07d}.pth"


def write_last_checkpoint(output_dir: Path, name: str) -> None:
    """Point `last_checkpoint` at `name`, atomically."""
    atomic_write_text(output_dir / LAST_CHECKPOINT, name)


def find_last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `last_checkpoint` names, or None."""
    pointer = Path(output_dir) / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    path = Path(output_dir) / pointer.read_text().strip()
    if not path.is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path
