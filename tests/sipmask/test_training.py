"""SipMask trains through `python -m condinst train` with the official losses (focal, IoU, centerness, the
mask-alignment-weighted crop-split BCE, and SipMask++'s mask re-scoring MSE), and the run's checkpoint
predicts and evaluates."""
from __future__ import annotations

import json

import pytest
import torch

from condinst.sipmask.model import SipMask
from synthetic_training import make_synthetic_coco, tiny_sipmask_config


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("shapes"), num_images=4)


def test_losses_are_finite_and_reach_every_head_part(coco):
    from training.data import CocoInstances
    from training.sipmask_losses import compute_sipmask_losses
    from training.transforms import TestTransform, collate

    ann, images = coco
    cfg = tiny_sipmask_config()
    dataset = CocoInstances(ann, images)
    cfg.fcos.num_classes = len(dataset.category_ids)
    torch.manual_seed(0)
    model = SipMask(cfg).train()
    torch.nn.init.constant_(model.bbox_head.fcos_reg.bias, 2.0)  # boxes with extent, so masks are trained
    transform = TestTransform(cfg)
    batch = collate([transform(dataset[i]) for i in range(2)], cfg)
    losses = compute_sipmask_losses(model, batch)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness", "loss_mask"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    head = model.bbox_head
    for p in (head.sip_cof.weight, head.sip_mask_lat.weight, head.sip_mask_lat0.weight,
              head.feat_align.conv_adaption.weight, head.fcos_cls.weight, head.fcos_reg.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.slow
def test_cli_train_predict_evaluate(coco, tmp_path):
    from training.cli import main

    ann, images = coco
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_sipmask_config().to_dict()))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--train-ann", str(ann), "--train-images", str(images),
                 "--output-dir", str(out), "--max-iter", "2", "--num-workers", "0", "--device", "cpu",
                 "--no-progress"]) == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_mask" in r for r in log)
    results = tmp_path / "results.json"
    assert main(["evaluate", "--weights", str(out / "model_final.pth"), "--ann", str(ann), "--images", str(images),
                 "--device", "cpu", "--output", str(results), "--no-progress"]) == 0
    assert isinstance(json.loads(results.read_text()), list)
    from condinst.config_sources import load_config

    assert load_config(str(out / "model_final.pth")).arch == "sipmask"


@pytest.mark.slow
def test_tiny_sipmask_learns_the_synthetic_shapes(tmp_path):
    """150 CPU iterations on 4 generated images: the loss falls and mask AP on them is above 0."""
    from training.data import CocoInstances
    from training.engine import train

    ann, images = make_synthetic_coco(tmp_path / "data", num_images=4)
    dataset = CocoInstances(ann, images)
    cfg = tiny_sipmask_config(max_iter=150, steps=(120,), warmup_iters=50)
    summary = train(cfg, dataset, tmp_path / "run", val_set=dataset, device="cpu", num_workers=0, log_period=20,
                    progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["total_loss"] for r in log if "total_loss" in r]
    print(f"\ntotal loss {losses[0]:.3f} -> {losses[-1]:.3f}; box AP {summary.metrics['bbox']['AP']:.3f}, "
          f"mask AP {summary.metrics['segm']['AP']:.3f}")
    assert losses[-1] < 0.5 * losses[0], losses
    assert summary.metrics["segm"]["AP"] > 0.05


def tiny_sipmask_plus_plus_config(max_iter: int = 2, **solver):
    """The tiny SipMask with SipMask++'s mask re-scoring, at 256 px (the least its convs take)."""
    cfg = tiny_sipmask_config(max_iter, **solver)
    cfg.sipmask.rescoring = True
    cfg.input.min_size_train, cfg.input.max_size_train = (256,), 352
    cfg.input.min_size_test, cfg.input.max_size_test = 256, 352
    return cfg.validate()


@pytest.mark.slow
def test_cli_trains_sipmask_plus_plus_and_refuses_too_small_inputs(tmp_path, capsys):
    from training.cli import main

    ann, images = make_synthetic_coco(tmp_path / "data", num_images=2, size=(192, 256))
    config = tmp_path / "tiny++.json"
    small = tiny_sipmask_plus_plus_config()
    small.input.min_size_train = (224, 256)
    config.write_text(json.dumps(small.to_dict()))
    args = ["--train-ann", str(ann), "--train-images", str(images), "--max-iter", "1", "--num-workers", "0",
            "--device", "cpu", "--no-progress"]
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config), "--output-dir", str(tmp_path / "refused"), *args])
    assert "error: " in capsys.readouterr().err and not (tmp_path / "refused" / "metrics.jsonl").exists()
    config.write_text(json.dumps(tiny_sipmask_plus_plus_config().to_dict()))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--output-dir", str(out), *args]) == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_iou" in r for r in log), log
    from condinst.config_sources import load_config

    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert "bbox_head.rescoring.mask_scoring.weight" in state["model"]
    assert load_config(str(out / "model_final.pth")).sipmask.rescoring


@pytest.mark.slow
def test_tiny_sipmask_plus_plus_learns_the_mask_iou(tmp_path):
    """A tiny SipMask++ trained on 4 generated images: the re-scoring loss falls (its IoU estimates follow
    the masks' IoU with their GT) while the mask loss falls too."""
    from training.data import CocoInstances
    from training.engine import train

    ann, images = make_synthetic_coco(tmp_path / "data", num_images=4, size=(192, 256))
    dataset = CocoInstances(ann, images)
    cfg = tiny_sipmask_plus_plus_config(max_iter=PLUS_PLUS_ITERS, steps=(int(PLUS_PLUS_ITERS * 0.8),),
                                        warmup_iters=20)
    train(cfg, dataset, tmp_path / "run", device="cpu", num_workers=0, log_period=10, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    iou = [r["loss_iou"] for r in log if "loss_iou" in r]
    mask = [r["loss_mask"] for r in log if "loss_mask" in r]
    print(f"\nloss_iou {iou[0]:.4f} -> {iou[-1]:.4f}; loss_mask {mask[0]:.4f} -> {mask[-1]:.4f}")
    assert len(iou) >= PLUS_PLUS_ITERS // 10 - 1
    assert iou[-1] < 0.5 * iou[0], iou
    assert mask[-1] < mask[0], mask


PLUS_PLUS_ITERS = 60  # enough for loss_iou to fall to a fraction (the suite has a 20-minute budget)
