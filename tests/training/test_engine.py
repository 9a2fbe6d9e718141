"""The training engine on a tiny model and generated images: checkpoints, exact resume, initial
weights (ImageNet pickles, torchvision, fine-tuning), the CLI, and (slow) that it actually learns."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from condinst.checkpoint import CheckpointError, read_checkpoint
from condinst.arch import get_preset
from condinst.config import CondInstConfig
from condinst.model import CondInst
from training.backbone_init import (NumpyOnlyUnpickler, adapt_config_to_init, apply_init_weights, convert_c2_name,
                                    read_init_weights)
from training.engine import train
from training.run_state import LAST_CHECKPOINT, find_last_checkpoint

from synthetic_training import make_synthetic_coco, tiny_train_config
from testutils import scaled

REPO = Path(__file__).resolve().parents[2]




@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spin-waiting makes 2 threads ~5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from training.data import CocoInstances

    root = tmp_path_factory.mktemp("synthetic")
    ann, images = make_synthetic_coco(root, num_images=4)
    return CocoInstances(ann, images), ann, images


def _train(cfg, dataset, out, **kw):
    kw = {"num_workers": 0, "log_period": 1, "progress": False, "device": "cpu", "tensorboard": False, **kw}
    return train(cfg, dataset, out, **kw)


def _assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs (max abs diff {(a[k].float() - b[k].float()).abs().max()})"


# ---- checkpoints and resume --------------------------------------------------------------------------

@pytest.mark.slow
def test_checkpoint_contents(coco, tmp_path):
    dataset = coco[0]
    summary = _train(tiny_train_config(max_iter=4, checkpoint_period=2), dataset, tmp_path / "run", tensorboard=True)
    out = tmp_path / "run"
    assert summary.end_iter == 4 and summary.iterations == 4
    assert (out / LAST_CHECKPOINT).read_text() == "model_final.pth"
    assert find_last_checkpoint(out) == out / "model_final.pth"
    assert (out / "model_0000002.pth").is_file() and not (out / "model_0000004.pth").exists()
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries
    ckpt = read_checkpoint(out / "model_final.pth")  # weights_only: everything is plain data + tensors
    assert ckpt["format"] == "condinst-studio" and ckpt["iteration"] == 4
    assert {"model", "config", "optimizer", "scheduler", "scaler", "rng_states", "trainer"} <= set(ckpt)
    cfg = CondInstConfig.from_dict(ckpt["config"])
    assert cfg.fcos.num_classes == 2 and cfg.category_ids == (1, 3) and cfg.class_names == ("ellipse", "rectangle")
    assert ckpt["scheduler"]["last_epoch"] == 4
    assert len(ckpt["optimizer"]["state"]) > 0  # momentum buffers
    assert ckpt["optimizer"]["param_groups"][0]["param_names"][0].startswith("backbone.")
    (rng,) = ckpt["rng_states"]  # one per rank
    assert {"python", "numpy", "torch", "cuda"} <= set(rng)
    assert ckpt["trainer"]["world_size"] == 1 and ckpt["trainer"]["global_batch_size"] == 2
    # The checkpoint is a normal model file for inference.
    from condinst.predictor import Predictor

    predictor = Predictor.from_weights(out / "model_final.pth")
    assert predictor.cfg.class_names == ("ellipse", "rectangle")
    # Metrics: one JSON line per iteration, TensorBoard events, a log, the effective config.
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3, 4]
    assert {"total_loss", "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "lr"} <= set(lines[0])
    assert lines[0]["lr"] == pytest.approx(0.01 * 0.001)  # warmup starts at warmup_factor
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "training summary" in (out / "log.txt").read_text()
    assert json.loads((out / "config.json").read_text())["fcos"]["num_classes"] == 2
    assert "images / s" in summary.table()


@pytest.mark.slow
def test_resume_is_bit_identical_to_an_uninterrupted_run(coco, tmp_path):
    """Stop at N/2 (a checkpoint), resume in a new engine call to N: same weights as one N-iteration run."""
    dataset = coco[0]
    n = 6
    full = tmp_path / "full"
    _train(tiny_train_config(max_iter=n, checkpoint_period=n // 2), dataset, full)
    # "Killed" run: the same schedule, stopped after its checkpoint at N/2 ...
    part = tmp_path / "part"
    first = _train(tiny_train_config(max_iter=n // 2), dataset, part)
    assert first.end_iter == n // 2
    _assert_same_tensors(read_checkpoint(full / "model_0000003.pth")["model"],
                         read_checkpoint(part / "model_final.pth")["model"], "midpoint")
    # ... then resumed to N.
    second = _train(tiny_train_config(max_iter=n), dataset, part, resume=True)
    assert (second.start_iter, second.end_iter) == (n // 2, n)
    a, b = read_checkpoint(full / "model_final.pth"), read_checkpoint(part / "model_final.pth")
    _assert_same_tensors(a["model"], b["model"], "final weights")
    for (ka, sa), (kb, sb) in zip(sorted(a["optimizer"]["state"].items()), sorted(b["optimizer"]["state"].items())):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"]), ka
    full_log = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    part_log = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in part_log] == list(range(1, n + 1))
    assert [r["total_loss"] for r in part_log] == [r["total_loss"] for r in full_log]
    # Resuming a finished run does nothing.
    again = _train(tiny_train_config(max_iter=n), dataset, part, resume=True)
    assert again.iterations == 0


@pytest.mark.slow
def test_resume_after_a_periodic_checkpoint_truncates_the_metrics(coco, tmp_path):
    """A run killed after iteration 5 resumes from its iteration-4 checkpoint and logs 5.. again once."""
    dataset = coco[0]
    out = tmp_path / "run"
    _train(tiny_train_config(max_iter=6, checkpoint_period=4), dataset, out)
    for name in ("model_final.pth",):
        (out / name).unlink()
    (out / LAST_CHECKPOINT).write_text("model_0000004.pth")
    _train(tiny_train_config(max_iter=6, checkpoint_period=4), dataset, out, resume=True)
    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_resume_without_a_checkpoint_starts_fresh(coco, tmp_path):
    summary = _train(tiny_train_config(max_iter=1), coco[0], tmp_path / "new", resume=True)
    assert summary.start_iter == 0 and summary.end_iter == 1


def test_batch_size_and_lr_scaling(coco, tmp_path):
    from training.engine import prepare_config

    cfg = prepare_config(get_preset("MS_R_50_1x"), coco[0], batch_size=4, lr_scale_batch=True)
    assert cfg.solver.ims_per_batch == 4 and cfg.solver.base_lr == pytest.approx(0.0025)
    assert cfg.solver.max_iter == 360000 and cfg.solver.steps == (240000, 320000)
    assert cfg.fcos.num_classes == 2 and cfg.class_names == ("ellipse", "rectangle")
    plain = prepare_config(get_preset("MS_R_50_1x"), coco[0], batch_size=4, max_iter=100)
    assert plain.solver.base_lr == 0.01 and plain.solver.max_iter == 100 and plain.solver.ims_per_batch == 4


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.slow
def test_amp_and_gradient_clipping_run(coco, tmp_path, amp):
    summary = _train(tiny_train_config(max_iter=2, clip_gradients=1.0), coco[0], tmp_path / amp, amp=amp)
    assert summary.end_iter == 2 and np.isfinite(summary.final_losses["total_loss"])


# ---- initial weights -----------------------------------------------------------------------------------

def _c2_name(d2_key: str) -> str:
    """detectron2 ResNet key -> caffe2 blob name (the inverse of convert_c2_name)."""
    k = d2_key.replace("stem.conv1.norm.weight", "res_conv1_bn_s").replace("stem.conv1.norm.bias", "res_conv1_bn_b")
    k = k.replace("stem.conv1.weight", "conv1_w")
    for d2, c2 in ((".shortcut.", ".branch1."), (".conv1.", ".branch2a."), (".conv2.", ".branch2b."),
                   (".conv3.", ".branch2c.")):
        k = k.replace(d2, c2)
    k = re.sub(r"norm\.weight$", "bn_s", k)
    k = re.sub(r"norm\.bias$", "bn_b", k)
    k = re.sub(r"\.weight$", "_w", k)
    return k.replace(".", "_")


def _write_c2_pickle(path: Path, cfg: CondInstConfig, wrap: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """A fake MSRA R-50.pkl for the ResNet of `cfg`: caffe2 names, numpy arrays, no running stats."""
    rng = np.random.default_rng(seed)
    blobs = {}
    for k, v in CondInst(cfg).backbone.bottom_up.state_dict().items():
        if "running" in k:
            continue
        if k.endswith("norm.weight"):  # scales near 1, biases near 0, conv weights of fan-in variance
            value = 1 + 0.1 * rng.standard_normal(tuple(v.shape))
        elif k.endswith("norm.bias"):
            value = 0.1 * rng.standard_normal(tuple(v.shape))
        else:
            value = rng.standard_normal(tuple(v.shape)) / np.sqrt(np.prod(v.shape[1:]))
        blobs[_c2_name(k)] = value.astype(np.float32)
    blobs["pred_w"] = np.zeros((10, 8 * cfg.backbone.res2_out_channels), np.float32)
    blobs["res2_0_branch2a_w_momentum"] = np.zeros(3, np.float32)
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "Caffe2"} if wrap else blobs, f, protocol=2)
    return blobs


def test_c2_names_follow_detectron2():
    assert convert_c2_name("conv1_w") == "stem.conv1.weight"
    assert convert_c2_name("res_conv1_bn_s") == "stem.conv1.norm.weight"
    assert convert_c2_name("res_conv1_bn_b") == "stem.conv1.norm.bias"
    assert convert_c2_name("res2_0_branch1_w") == "res2.0.shortcut.weight"
    assert convert_c2_name("res3_2_branch2b_bn_s") == "res3.2.conv2.norm.weight"
    assert convert_c2_name("res5_0_branch2c_bn_b") == "res5.0.conv3.norm.bias"
    assert convert_c2_name("pred_w") == "linear.weight"


@pytest.mark.parametrize("wrap", [False, True])
def test_detectron2_imagenet_pickle(tmp_path, wrap):
    cfg = tiny_train_config()
    blobs = _write_c2_pickle(tmp_path / "R-50.pkl", cfg, wrap=wrap)
    init = read_init_weights(tmp_path / "R-50.pkl")
    assert (init.kind, init.source, init.style) == ("backbone", "detectron2-pkl", "caffe")
    assert adapt_config_to_init(cfg, init) == []  # already caffe style, BGR
    model = CondInst(cfg)
    report = apply_init_weights(model, init)
    sd = model.state_dict()
    assert report.loaded == len(blobs) - 2
    np.testing.assert_array_equal(sd["backbone.bottom_up.res4.1.conv2.weight"].numpy(), blobs["res4_1_branch2b_w"])
    np.testing.assert_array_equal(sd["backbone.bottom_up.stem.conv1.norm.bias"].numpy(), blobs["res_conv1_bn_b"])
    np.testing.assert_array_equal(sd["backbone.bottom_up.res2.0.shortcut.weight"].numpy(), blobs["res2_0_branch1_w"])
    # No running statistics in the file: FrozenBN mean 0, var 1 (detectron2 behaviour).
    assert (sd["backbone.bottom_up.res3.0.conv1.norm.running_var"] == 1).all()
    assert (sd["backbone.bottom_up.res3.0.conv1.norm.running_mean"] == 0).all()


def test_pickle_with_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"conv1_w": Exploit()}, f)
    with pytest.raises(CheckpointError, match="refused to load global"):
        read_init_weights(path)
    with pytest.raises(pickle.UnpicklingError):
        NumpyOnlyUnpickler(open(path, "rb")).load()


def test_imagenet_weights_of_the_wrong_depth_are_rejected(tmp_path):
    cfg = tiny_train_config()
    _write_c2_pickle(tmp_path / "R-50.pkl", cfg)
    deeper = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, depth=101))
    with pytest.raises(CheckpointError, match="R-101"):
        apply_init_weights(CondInst(deeper), read_init_weights(tmp_path / "R-50.pkl"))


def test_torchvision_resnet_switches_to_pytorch_style(tmp_path):
    import torchvision

    tv = torchvision.models.resnet50()
    torch.save(tv.state_dict(), tmp_path / "resnet50.pth")
    cfg = get_preset("MS_R_50_1x")
    init = read_init_weights(tmp_path / "resnet50.pth")
    assert (init.kind, init.source, init.style) == ("backbone", "torchvision", "pytorch")
    notes = adapt_config_to_init(cfg, init)
    assert notes and "pytorch" in notes[0]
    assert cfg.backbone.style == "pytorch" and cfg.input.format == "RGB"
    assert cfg.input.pixel_std == pytest.approx((58.395, 57.12, 57.375))
    model = CondInst(cfg)
    apply_init_weights(model, init)
    sd = model.state_dict()
    assert torch.equal(sd["backbone.bottom_up.stem.conv1.weight"], tv.conv1.weight)
    assert torch.equal(sd["backbone.bottom_up.res3.0.conv2.weight"], tv.layer2[0].conv2.weight)
    assert torch.equal(sd["backbone.bottom_up.res5.0.shortcut.norm.running_var"], tv.layer4[0].downsample[1].running_var)
    # pytorch style: the stride-2 3x3 conv
    assert model.backbone.bottom_up.res3[0].conv2.stride == (2, 2)


def test_fine_tuning_reinitialises_class_layers(tmp_path):
    source_cfg = tiny_train_config()
    source_cfg.fcos.num_classes = 5
    source_cfg.mask_branch.semantic_loss_on = True
    source = CondInst(source_cfg)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    from condinst.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "coco.pth", source, source_cfg)
    cfg = tiny_train_config()
    cfg.fcos.num_classes = 2
    cfg.mask_branch.semantic_loss_on = True
    init = read_init_weights(tmp_path / "coco.pth")
    assert init.kind == "condinst"
    model = CondInst(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_init_weights(model, init)
    assert report.reinitialized == ["mask_branch.logits", "proposal_generator.fcos_head.cls_logits"]
    sd, src = model.state_dict(), source.state_dict()
    for k in sd:
        if k.startswith(("proposal_generator.fcos_head.cls_logits.", "mask_branch.logits.")):
            assert torch.equal(sd[k], fresh[k]), k  # prior-probability bias, std-0.01 weights
        else:
            assert torch.equal(sd[k], src[k]), k
    assert sd["proposal_generator.fcos_head.cls_logits.bias"][0].item() == pytest.approx(-4.59512, abs=1e-5)
    # A different architecture is an error, not a silent partial load.
    other = tiny_train_config()
    other.neck.out_channels = 64
    with pytest.raises(CheckpointError, match="shape mismatch"):
        apply_init_weights(CondInst(other), init)


@pytest.mark.slow
def test_train_from_imagenet_pickle(coco, tmp_path):
    cfg = tiny_train_config(max_iter=1)
    blobs = _write_c2_pickle(tmp_path / "R-50.pkl", cfg)
    summary = _train(cfg, coco[0], tmp_path / "run", init_weights=tmp_path / "R-50.pkl")
    sd = read_checkpoint(summary.final_checkpoint)["model"]
    # stem and res2 are frozen (freeze_at 2): still exactly the ImageNet values after training
    np.testing.assert_array_equal(sd["backbone.bottom_up.res2.0.conv1.weight"].numpy(), blobs["res2_0_branch2a_w"])


# ---- command line --------------------------------------------------------------------------------------

def test_cli_bad_config_exits_2_with_one_line(coco, tmp_path):
    _, ann, images = coco
    proc = subprocess.run([sys.executable, "-m", "training.cli", "train", "--config", "NO_SUCH_PRESET",
                           "--train-ann", str(ann), "--train-images", str(images), "--output-dir", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=scaled(300), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "NO_SUCH_PRESET" in lines[0], proc.stderr


def test_cli_reports_bad_input_in_one_line(coco, tmp_path, capsys):
    from training.cli import main

    _, ann, images = coco
    base = ["train", "--train-ann", str(ann), "--train-images", str(images), "--output-dir", str(tmp_path / "o")]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"backbone": {"depth": 34}}')
    not_coco = tmp_path / "not_coco.json"
    not_coco.write_text("[1, 2]")
    cases = [
        (base + ["--config", str(tmp_path / "missing.yaml")], "no such file"),
        (base + ["--config", str(bad_json)], "depth"),
        (base + ["--weights", str(tmp_path / "missing.pkl")], "no such file"),
        (base + ["--batch-size", "0"], "--batch-size"),
        (base + ["--val-ann", str(ann)], "--val-images"),
        (["train", "--train-ann", str(tmp_path / "nope.json"), "--train-images", str(images),
          "--output-dir", str(tmp_path / "o")], "nope.json"),
        (["train", "--train-ann", str(not_coco), "--train-images", str(images), "--output-dir", str(tmp_path / "o"),
          "--config", "MS_R_50_1x"], "not_coco.json"),
        (["evaluate", "--weights", str(tmp_path / "none.pth"), "--ann", str(ann), "--images", str(images)], "none.pth"),
        (["evaluate", "--weights", str(bad_json), "--ann", str(ann), "--images", str(images)], "bad.json"),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2, argv
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], (argv, err)


@pytest.mark.slow
def test_cli_train_then_evaluate(coco, tmp_path):
    from training.cli import main

    _, ann, images = coco
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_train_config().to_dict()))
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--train-ann", str(ann), "--train-images", str(images),
            "--output-dir", str(out), "--max-iter", "2", "--num-workers", "0", "--device", "cpu", "--no-progress",
            "--val-ann", str(ann), "--val-images", str(images)]
    assert main(args) == 0
    assert (out / "model_final.pth").is_file()
    assert any("bbox/AP" in json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
    with pytest.raises(SystemExit) as exc:  # the folder holds a run: --resume or another folder
        main(args)
    assert exc.value.code == 2
    assert main(args + ["--resume"]) == 0  # finished already: nothing to do
    results = tmp_path / "results.json"
    assert main(["evaluate", "--weights", str(out / "model_final.pth"), "--ann", str(ann), "--images", str(images),
                 "--device", "cpu", "--output", str(results), "--no-progress"]) == 0
    assert isinstance(json.loads(results.read_text()), list)
    # The config.json a run writes is a valid --config.
    from training.cli import load_config

    assert load_config(str(out / "config.json")).fcos.num_classes == 2


# ---- learning --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_model_learns_the_synthetic_shapes(tmp_path):
    """~300 CPU iterations on 4 generated images: the loss falls and mask AP on them is well above 0."""
    from training.data import CocoInstances

    ann, images = make_synthetic_coco(tmp_path / "data", num_images=4)
    dataset = CocoInstances(ann, images)
    cfg = tiny_train_config(max_iter=300, steps=(240,), warmup_iters=50, checkpoint_period=10**6)
    cfg.input.min_size_train = (128,)
    summary = _train(cfg, dataset, tmp_path / "run", val_set=dataset, log_period=20)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["total_loss"] for r in log if "total_loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    print(f"\ntotal loss {losses[0]:.3f} -> {losses[-1]:.3f}; box AP {summary.metrics['bbox']['AP']:.3f}, "
          f"mask AP {summary.metrics['segm']['AP']:.3f}")
    mask_losses = [r["loss_mask"] for r in log if "loss_mask" in r]
    assert mask_losses[-1] < 0.2, mask_losses
    assert summary.metrics["segm"]["AP"] > 0.5, summary.metrics
    assert summary.metrics["bbox"]["AP"] > 0.5, summary.metrics


@pytest.mark.slow
def test_data_workers_do_not_change_the_run(coco, tmp_path):
    """Seeded per-sample augmentation: the same losses with 0 or 2 loader processes."""
    cfg = tiny_train_config(max_iter=3)
    _train(cfg, coco[0], tmp_path / "w0", num_workers=0)
    _train(cfg, coco[0], tmp_path / "w2", num_workers=2)
    logs = [[json.loads(line)["total_loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("w0", "w2")]
    assert logs[0] == logs[1]
