"""COCO dataset loading, bad-data handling, transforms, batching and the train loader."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from condinst.config import CondInstConfig
from condinst.preprocess import resized_shape
from training.data import CocoInstances, DatasetError
from training.loader import GroupedInfiniteBatchSampler, build_train_loader
from training.transforms import (TestTransform, TrainBatch, TrainTransform, collate, rasterize_polygons,
                                 transform_record)

DATASETS = Path(os.environ.get("CONDINST_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "datasets"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

H, W = 48, 64
BIG_ID = 2 ** 40 + 7  # 64-bit ids must survive
CATEGORIES = [{"id": 20, "name": "cat"}, {"id": 3, "name": "ant"}, {"id": 7, "name": "bee"}]  # gaps, unsorted


def _square_rle(h: int, w: int, box) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 1
    return m


def _uncompressed(m: np.ndarray) -> dict:
    """Column-major run lengths starting with zeros (COCO's uncompressed RLE)."""
    flat = m.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def write_dataset(root: Path, mutate=None) -> tuple[Path, Path]:
    """A 4-image COCO set: polygons (multi-part), uncompressed and compressed RLE, crowd, empty image."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for k, (name, (h, w)) in enumerate({"a.png": (H, W), "b.png": (H, W), "c.jpg": (W, H), "d.png": (H, W)}.items()):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images_dir / name)
        images.append({"id": BIG_ID + k, "file_name": name, "height": h, "width": w})
    compressed = mask_util.encode(_square_rle(H, W, (30, 10, 50, 40)))
    compressed["counts"] = compressed["counts"].decode("ascii")
    annotations = [
        {"id": 1, "image_id": BIG_ID, "category_id": 3, "iscrowd": 0, "bbox": [4, 4, 20, 16],
         "segmentation": [[4, 4, 24, 4, 24, 20, 4, 20]], "area": 320},
        {"id": 2, "image_id": BIG_ID, "category_id": 20, "iscrowd": 0, "bbox": [30, 10, 30, 30],
         "segmentation": [[30, 10, 40, 10, 40, 20], [50, 30, 60, 30, 60, 40, 50, 40]], "area": 150},
        {"id": BIG_ID + 100, "image_id": BIG_ID + 1, "category_id": 7, "iscrowd": 0, "bbox": [10, 5, 20, 30],
         "segmentation": _uncompressed(_square_rle(H, W, (10, 5, 30, 35))), "area": 600},
        {"id": 4, "image_id": BIG_ID + 1, "category_id": 20, "iscrowd": 0, "bbox": [30, 10, 20, 30],
         "segmentation": compressed, "area": 600},
        {"id": 5, "image_id": BIG_ID + 1, "category_id": 3, "iscrowd": 1, "bbox": [0, 0, 10, 10],
         "segmentation": _uncompressed(_square_rle(H, W, (0, 0, 10, 10))), "area": 100},
        {"id": 6, "image_id": BIG_ID + 2, "category_id": 7, "iscrowd": 0, "bbox": [5, 5, 20, 40],
         "segmentation": [[5, 5, 25, 5, 25, 45, 5, 45]], "area": 800},
    ]
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    if mutate:
        mutate(data, images_dir)
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, images_dir


@pytest.fixture
def tiny(tmp_path):
    ann_file, images_dir = write_dataset(tmp_path)
    return CocoInstances(ann_file, images_dir)


def small_cfg(fmt: str = "BGR") -> CondInstConfig:
    cfg = CondInstConfig()
    cfg.input.format = fmt
    cfg.input.min_size_train = (64, 96)
    cfg.input.max_size_train = 160
    cfg.input.min_size_test = 80
    cfg.input.max_size_test = 160
    return cfg


# ---- dataset -----------------------------------------------------------------------------------------

def test_categories_with_gaps_map_to_contiguous_indices(tiny):
    assert tiny.category_ids == (3, 7, 20)
    assert tiny.class_names == ("ant", "bee", "cat")
    assert tiny.num_classes == 3
    classes = {a["id"]: (a["class_index"], a["category_id"]) for a in tiny[0]["annotations"]}
    assert classes == {1: (0, 3), 2: (2, 20)}


def test_records(tiny):
    assert len(tiny) == 4
    r = tiny[1]
    assert r["image"].shape == (H, W, 3) and r["image"].dtype == np.uint8
    assert r["image_id"] == BIG_ID + 1 and (r["height"], r["width"]) == (H, W)
    assert r["file_name"].endswith("b.png")
    anns = {a["id"]: a for a in r["annotations"]}
    assert set(anns) == {BIG_ID + 100, 4, 5}  # crowd kept for evaluation
    assert anns[5]["iscrowd"] == 1 and anns[4]["bbox"] == [30.0, 10.0, 20.0, 30.0]
    assert isinstance(anns[BIG_ID + 100]["segmentation"]["counts"], list)  # as in the JSON
    assert tiny[3]["annotations"] == []  # image without annotations is kept
    assert tiny.has_instances().tolist() == [True, True, True, False]
    assert tiny.group_ids().tolist() == [0, 0, 1, 0]  # c.jpg is portrait


def test_coco_view_for_evaluation(tiny):
    coco = tiny.coco
    assert len(coco.getAnnIds()) == 6 and sorted(coco.getCatIds()) == [3, 7, 20]
    assert coco.imgs[BIG_ID + 3]["file_name"] == "d.png"
    assert coco.anns[5]["iscrowd"] == 1


def _set(path: str, value):
    def mutate(data, images_dir):
        obj = data
        keys = path.split(".")
        for k in keys[:-1]:
            obj = obj[int(k)] if k.isdigit() else obj[k]
        last = keys[-1]
        if value is _DELETE:
            del obj[int(last) if last.isdigit() else last]
        else:
            obj[int(last) if last.isdigit() else last] = value
    return mutate


_DELETE = object()


def _missing_image_file(data, images_dir):
    (images_dir / "b.png").unlink()


def _non_image_file(data, images_dir):
    (images_dir / "b.png").write_text("this is not a picture")


def _size_mismatch(data, images_dir):
    data["images"][1]["height"] = H + 2


BAD_ANNOTATIONS = {  # case -> (mutation, words expected in the message, what remains)
    "missing key": (_set("annotations.0.bbox", _DELETE), ["annotation id 1", "missing key", "bbox"]),
    "degenerate polygon": (_set("annotations.0.segmentation", [[4, 4, 24, 4]]),
                           ["annotation id 1", "degenerate polygon", "2 point"]),
    "zero area": (_set("annotations.0.segmentation", [[4, 4, 10, 10, 20, 20]]), ["annotation id 1", "zero area"]),
    "box outside": (_set("annotations.0.bbox", [50, 4, 30, 16]), ["annotation id 1", "outside", "64x48"]),
    "empty box": (_set("annotations.0.bbox", [4, 4, 0, 16]), ["annotation id 1", "no extent"]),
    "unknown category": (_set("annotations.0.category_id", 99), ["annotation id 1", "unknown category id 99"]),
    "RLE size": (_set("annotations.3.segmentation.size", [H, W + 1]), ["annotation id 4", "RLE size"]),
    "unknown image": (_set("annotations.0.image_id", 12345), ["annotation id 1", "image_id 12345"]),
    "duplicate annotation id": (_set("annotations.1.id", 1),
                                ["annotation id 1", "duplicate annotation id", f"image id {BIG_ID}"]),
}
BAD_IMAGES = {
    "missing image file": (_missing_image_file, ["image id", "b.png", "not found"]),
    "non-image file": (_non_image_file, ["b.png", "not an image file"]),
    "size mismatch": (_size_mismatch, ["b.png", "the JSON says 64x50"]),
    "image missing key": (_set("images.1.width", _DELETE), ["images[1]", "missing key", "width"]),
    # observed: the same picture listed under two image ids passed silently
    "same file under two ids": (_set("images.1.file_name", "a.png"),
                                [f"image id {BIG_ID + 1}", "duplicate image", f"already image id {BIG_ID}"]),
    "same file, other spelling": (_set("images.1.file_name", "./a.png"),
                                  [f"image id {BIG_ID + 1}", "duplicate image", f"already image id {BIG_ID}"]),
}


@pytest.mark.parametrize("case", list(BAD_ANNOTATIONS))
def test_bad_annotation_raise_and_skip(tmp_path, case, caplog):
    mutate, words = BAD_ANNOTATIONS[case]
    ann_file, images_dir = write_dataset(tmp_path, mutate)
    with pytest.raises(DatasetError) as e:
        CocoInstances(ann_file, images_dir)
    for w in [str(ann_file)] + words:
        assert w in str(e.value), (w, str(e.value))
    with caplog.at_level(logging.WARNING, logger="training.data"):
        ds = CocoInstances(ann_file, images_dir, on_error="skip")
    assert len(ds.skipped) == 1 and words[0] in ds.skipped[0]
    assert any("skipped" in r.message for r in caplog.records)
    assert len(ds) == 4  # only the annotation went
    assert sum(len(info.annotations) for info in ds.images) == 5


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_raise_and_skip(tmp_path, case):
    mutate, words = BAD_IMAGES[case]
    ann_file, images_dir = write_dataset(tmp_path, mutate)
    with pytest.raises(DatasetError) as e:
        CocoInstances(ann_file, images_dir)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    ds = CocoInstances(ann_file, images_dir, on_error="skip")
    assert len(ds) == 3 and BIG_ID + 1 not in [info.id for info in ds.images]
    assert len(ds.skipped) == 1  # its annotations go silently with it
    assert sum(len(info.annotations) for info in ds.images) == 3


@pytest.mark.parametrize("text, words", [
    ("{not json", ["not valid JSON", "line 1"]),
    ("[1, 2]", ["expected a COCO JSON object"]),
    ('{"images": [], "annotations": []}', ["missing the top-level key 'categories'"]),
])
def test_malformed_json_always_raises(tmp_path, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    for mode in ("raise", "skip"):
        with pytest.raises(DatasetError) as e:
            CocoInstances(path, tmp_path, on_error=mode)
        assert str(path) in str(e.value) and all(w in str(e.value) for w in words)


def test_skip_keeps_the_good_parts_of_a_polygon(tmp_path):
    ann_file, images_dir = write_dataset(tmp_path, _set("annotations.1.segmentation.1", [50, 30, 60, 30]))
    with pytest.raises(DatasetError, match="polygon part 1"):
        CocoInstances(ann_file, images_dir)
    ds = CocoInstances(ann_file, images_dir, on_error="skip")
    seg = {a["id"]: a["segmentation"] for a in ds[0]["annotations"]}[2]
    assert seg == [[30, 10, 40, 10, 40, 20]]


def test_image_that_breaks_after_startup_raises_with_the_file_name(tiny):
    Path(tiny.metadata(2)["file_name"]).write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetError, match="c.jpg"):
        tiny[2]


# ---- transforms ----------------------------------------------------------------------------------------

def test_transform_without_resize_decodes_every_mask_kind(tiny):
    cfg = small_cfg("RGB")
    s0 = transform_record(tiny[0], cfg, None, 1333, False)
    assert s0.gt_classes.tolist() == [0, 2]
    assert s0.gt_boxes.tolist() == [[4, 4, 24, 20], [30, 10, 60, 40]]
    poly = tiny[0]["annotations"][1]["segmentation"]
    assert np.array_equal(s0.gt_masks[1].numpy(), rasterize_polygons(poly, H, W).astype(bool))  # two parts
    assert torch.equal(s0.image, torch.from_numpy(tiny[0]["image"].copy()).permute(2, 0, 1))
    s1 = transform_record(tiny[1], cfg, None, 1333, False)
    assert s1.gt_classes.tolist() == [1, 2]  # crowd dropped
    assert np.array_equal(s1.gt_masks[0].numpy(), _square_rle(H, W, (10, 5, 30, 35)).astype(bool))  # uncompressed
    assert np.array_equal(s1.gt_masks[1].numpy(), _square_rle(H, W, (30, 10, 50, 40)).astype(bool))  # compressed
    assert s1.image_id == BIG_ID + 1 and s1.original_size == (H, W)
    empty = transform_record(tiny[3], cfg, None, 1333, False)
    assert empty.gt_boxes.shape == (0, 4) and empty.gt_masks.shape == (0, H, W)


def test_bgr_channel_order(tiny):
    rgb = transform_record(tiny[0], small_cfg("RGB"), None, 1333, False).image
    bgr = transform_record(tiny[0], small_cfg("BGR"), None, 1333, False).image
    assert torch.equal(bgr, rgb.flip(0))


def test_resize_and_flip_are_consistent(tiny):
    cfg = small_cfg("RGB")
    for index in (0, 1):
        plain = transform_record(tiny[index], cfg, 96, 160, False)
        flipped = transform_record(tiny[index], cfg, 96, 160, True)
        nh, nw = resized_shape(H, W, 96, 160)
        assert plain.image.shape == (3, nh, nw) and plain.gt_masks.shape[1:] == (nh, nw)
        assert torch.equal(flipped.image, plain.image.flip(-1))
        x1, y1, x2, y2 = plain.gt_boxes.unbind(1)
        assert torch.allclose(flipped.gt_boxes, torch.stack([nw - x2, y1, nw - x1, y2], 1))
        assert torch.allclose(plain.gt_boxes, torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
             for a in tiny[index]["annotations"] if not a["iscrowd"]]) * torch.tensor([nw / W, nh / H] * 2))
        for m_plain, m_flip in zip(plain.gt_masks, flipped.gt_masks):
            mirrored = m_plain.flip(-1)
            iou = (mirrored & m_flip).sum() / (mirrored | m_flip).sum()
            assert iou > 0.98  # polygons are rasterised after the mirror (pixel-exact for RLE)
        for box, mask in zip(plain.gt_boxes, plain.gt_masks):  # masks stay inside their boxes (+1 px)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1 and ys.max() <= box[3]
    rle_plain = transform_record(tiny[1], cfg, 96, 160, False).gt_masks
    rle_flip = transform_record(tiny[1], cfg, 96, 160, True).gt_masks
    assert torch.equal(rle_flip, rle_plain.flip(-1))


def test_train_transform_is_random_but_reproducible(tiny):
    t = TrainTransform(small_cfg())
    draws = {(tuple(t(tiny[0], torch.Generator().manual_seed(s)).image.shape),
              tuple(t(tiny[0], torch.Generator().manual_seed(s)).gt_boxes[0].tolist())) for s in range(12)}
    assert {d[0][1] for d in draws} == {64, 96}  # both short sides drawn
    assert len({d[1] for d in draws}) == 4  # 2 sizes x flip or not
    a = t(tiny[0], torch.Generator().manual_seed(3))
    b = t(tiny[0], torch.Generator().manual_seed(3))
    assert torch.equal(a.image, b.image) and torch.equal(a.gt_masks, b.gt_masks)


def test_test_transform(tiny):
    s = TestTransform(small_cfg())(tiny[2])
    assert s.image.shape == (3, *resized_shape(W, H, 80, 160))


def test_collate_pads_images_and_masks(tiny):
    cfg = small_cfg()
    samples = [transform_record(tiny[i], cfg, None, 1333, False) for i in (0, 2)]  # 48x64 and 64x48
    batch = collate(samples, cfg)
    assert batch.images.shape == (2, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.image_sizes == [(H, W), (W, H)] and batch.image_ids == [BIG_ID, BIG_ID + 2]
    mean = torch.tensor(cfg.input.pixel_mean).view(3, 1, 1)
    assert torch.allclose(batch.images[0, :, :H, :W], samples[0].image.float() - mean)
    assert (batch.images[0, :, H:] == 0).all()
    t0 = batch.targets[0]
    assert t0.gt_masks.shape == (2, 64, 64) and not t0.gt_masks[:, H:].any()
    assert torch.equal(t0.gt_masks[:, :H, :W], samples[0].gt_masks)
    moved = batch.to("cpu")
    assert isinstance(moved, TrainBatch) and moved.targets[1].gt_classes.tolist() == [1]


# ---- loader ---------------------------------------------------------------------------------------------

def test_sampler_shards_groups_and_resumes():
    groups = [0, 1, 0, 1, 0, 1, 0, 1, 0, 0]
    s = GroupedInfiniteBatchSampler(list(range(10)), groups, batch_size=2, seed=5)
    it = iter(s)
    batches = [next(it) for _ in range(10)]
    assert all(len({groups[i] for i, _ in b}) == 1 for b in batches)  # one aspect group per batch
    seeds = [seed for b in batches for _, seed in b]
    assert len(set(seeds)) == len(seeds)
    again = iter(GroupedInfiniteBatchSampler(list(range(10)), groups, batch_size=2, seed=5, start_batch=3))
    assert next(again) == batches[3]
    r0 = iter(GroupedInfiniteBatchSampler(list(range(10)), [0] * 10, 1, seed=5, rank=0, world_size=2))
    r1 = iter(GroupedInfiniteBatchSampler(list(range(10)), [0] * 10, 1, seed=5, rank=1, world_size=2))
    first = [next(r0)[0][0] for _ in range(5)] + [next(r1)[0][0] for _ in range(5)]
    assert sorted(first) == list(range(10))  # the ranks split one permutation


def test_train_loader_is_deterministic_and_skips_empty_images(tiny):
    cfg = small_cfg()

    def take(num_workers):
        it = iter(build_train_loader(tiny, cfg, batch_size=1, num_workers=num_workers, seed=11))
        return [next(it) for _ in range(6)]

    a, b = take(0), take(1)
    assert all(x.image_ids[0] != BIG_ID + 3 for x in a)  # no annotation -> not trained on
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images)
        assert all(torch.equal(p.gt_masks, q.gt_masks) for p, q in zip(x.targets, y.targets))
    assert len({tuple(x.images.shape) for x in a}) > 1  # random sizes


# ---- the datasets shipped in shared/ ----------------------------------------------------------------------

SHARED_SETS = {
    "fruits_nuts": ("fruits_nuts/data/trainval.json", "fruits_nuts/data/images", 18, 165, 0, 3),
    "coco2017_sample_icevision": ("coco2017_sample_icevision/samples/annotations.json",
                                  "coco2017_sample_icevision/samples/images", 6, 36, 1, 80),
}


@pytest.mark.parametrize("name", list(SHARED_SETS))
def test_shared_datasets(name):
    ann, images, n_images, n_anns, n_crowd, n_classes = SHARED_SETS[name]
    if not (DATASETS / ann).is_file():
        pytest.skip(f"{DATASETS / ann} not present")
    ds = CocoInstances(DATASETS / ann, DATASETS / images)
    assert (len(ds), ds.num_classes, ds.skipped) == (n_images, n_classes, [])
    anns = [a for info in ds.images for a in info.annotations]
    assert len(anns) == n_anns and sum(a["iscrowd"] for a in anns) == n_crowd
    cfg = small_cfg()
    cfg.input.min_size_train, cfg.input.max_size_train = (320,), 512
    index = max(range(len(ds)), key=lambda i: len(ds.images[i].annotations))
    s = TrainTransform(cfg)(ds[index], torch.Generator().manual_seed(0))
    assert min(s.image_size) == 320 and len(s.gt_boxes) > 0
    h, w = s.image_size
    assert (s.gt_boxes[:, 2] <= w).all() and (s.gt_boxes[:, 3] <= h).all() and (s.gt_boxes >= 0).all()
    assert s.gt_masks.flatten(1).any(1).all()  # every instance has pixels
    # each mask lies in its box (1 px slack for rasterisation)
    for box, mask in zip(s.gt_boxes, s.gt_masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1
    if name == "coco2017_sample_icevision":
        assert sum(not any(not a["iscrowd"] for a in info.annotations) for info in ds.images) == 1
