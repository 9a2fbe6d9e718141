"""Two-process DistributedDataParallel training on CPU (gloo) against one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from condinst.checkpoint import read_checkpoint

from synthetic_training import make_synthetic_coco, tiny_train_config
from testutils import scaled

REPO = Path(__file__).resolve().parents[2]


def _losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["total_loss"] for r in lines if "total_loss" in r]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_and_resume_exactly(tmp_path):
    from training.data import CocoInstances
    from training.engine import train

    iterations = 8
    ann, images = make_synthetic_coco(tmp_path / "data", num_images=6, seed=3)
    cfg = tiny_train_config(max_iter=iterations, steps=(6,), warmup_iters=2, checkpoint_period=4)
    cfg.input.min_size_train = (128,)
    cfg.input.hflip_train = False  # the same images in both runs (flips are drawn per rank)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(cfg.to_dict()))
    common = ["train", "--config", str(config), "--train-ann", str(ann), "--train-images", str(images),
              "--batch-size", "2", "--device", "cpu", "--num-workers", "0", "--log-period", "1", "--no-progress"]
    ddp_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "training.cli", *common, "--output-dir", str(ddp_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=scaled(600))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single_dir = tmp_path / "single"
        train(cfg, CocoInstances(ann, images), single_dir, batch_size=2, num_workers=0, log_period=1,
              progress=False, device="cpu", tensorboard=False)
    finally:
        torch.set_num_threads(threads)

    ddp, single = _losses(ddp_dir), _losses(single_dir)
    assert len(ddp) == len(single) == iterations
    rel = [abs(a - b) / b for a, b in zip(ddp, single)]
    print("\nDDP 2x1 :", " ".join(f"{v:.4f}" for v in ddp))
    print("single 1x2:", " ".join(f"{v:.4f}" for v in single))
    print("relative difference:", " ".join(f"{v:.4f}" for v in rel))
    # Same initial weights and the same global batches; the only differences are per-process BatchNorm
    # statistics in the mask branch (1 image vs 2) and the mask loss averaged per process.
    assert rel[0] < 0.02, rel
    assert sum(rel) / len(rel) < 0.05, rel
    ckpt = read_checkpoint(ddp_dir / "model_final.pth")
    assert ckpt["trainer"]["world_size"] == 2 and len(ckpt["rng_states"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert (ddp_dir / "model_0000004.pth").is_file()

    # Resume the 2-process run from its iteration-4 checkpoint in a new folder: bit-identical end.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "model_0000004.pth").write_bytes((ddp_dir / "model_0000004.pth").read_bytes())
    (resumed / "last_checkpoint").write_text("model_0000004.pth")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "training.cli", *common, "--output-dir", str(resumed), "--resume"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=scaled(600))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = read_checkpoint(ddp_dir / "model_final.pth")["model"], read_checkpoint(resumed / "model_final.pth")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(resumed) == ddp[4:]


def test_helpers_in_a_single_process(monkeypatch):
    from training import distributed as d

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = d.init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    assert info.device == torch.device("cpu")
    assert d.get_rank() == 0 and d.get_world_size() == 1 and d.is_main()
    assert d.all_reduce_mean({"a": torch.tensor(2.0), "b": 3}) == {"a": 2.0, "b": 3.0}
    assert d.all_reduce_mean(1.5) == 1.5
    t = torch.ones(3)
    assert d.all_reduce_mean(t) is t
    assert d.all_gather_object({"x": 1}) == [{"x": 1}]
    d.barrier()  # no-op
