"""What an import will write and what it did: a checked COCO dataset's plan, the report, a segmentation's RLE.

`app.interop.imports` plans and writes COCO datasets, `app.interop.import_results` checks COCO results against a plan,
and the Label Studio converter (`app.interop.ml_backend.interop`) reads masks with the same `annotation_rle`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pycocotools import mask as mask_utils

from app.store.ingest import PreparedImage
from app.store.masks import EncodedMask
from training.data import CocoInstances
from training.entry_checks import compressed_rle_runs

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class ImportReport:
    """What an import did: counts and the messages of what was skipped."""

    images: int = 0
    instances: int = 0
    crowd: int = 0
    categories: int = 0
    skipped: list[str] = field(default_factory=list)
    renumbered: dict[str, dict[int, int]] = field(default_factory=lambda: {"images": {}, "annotations": {}})
    predictions: int = 0  # results: model instances added
    predictions_covered: int = 0  # results on top of a person's instance, not added
    reviewed_untouched: int = 0  # results for reviewed images, not added
    replaced: int = 0  # earlier untouched model instances replaced by the results

    def summary(self) -> str:
        text = (f"imported {self.images} images, {self.instances} instances ({self.crowd} crowd), "
                f"{self.categories} new classes")
        if self.predictions or self.predictions_covered or self.reviewed_untouched:
            text += (f"; {self.predictions} model predictions added ({self.predictions_covered} left out on top "
                     f"of a person's instance, {self.reviewed_untouched} reviewed images untouched, "
                     f"{self.replaced} earlier model instances replaced)")
        for kind, mapping in self.renumbered.items():
            if mapping:
                text += f"; {kind} renumbered (ids must be positive): " + ", ".join(
                    f"{old} -> {new}" for old, new in mapping.items())
        if self.skipped:
            text += f"; skipped {len(self.skipped)} bad entries:\n  " + "\n  ".join(self.skipped)
        return text


def annotation_rle(segmentation: Any, height: int, width: int) -> bytes:
    """The exact, canonical compressed RLE counts of a CHECKED COCO segmentation (`training.entry_checks`:
    coordinates in range, RLE counts valid): polygons rasterised by pycocotools (parts unioned), RLE
    (compressed or not) re-encoded from its runs. No full-size mask is made."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        return bytes(rle["counts"])
    counts = segmentation["counts"]
    runs = [int(c) for c in counts] if isinstance(counts, list) else compressed_rle_runs(counts).tolist()
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    if 0 in runs[1:]:  # an empty run inside: not canonical, so encode the mask it stands for
        return bytes(mask_utils.encode(mask_utils.decode(rle))["counts"])
    return bytes(rle["counts"])


@dataclass
class CocoPlan:
    """A checked COCO dataset ready to be written: its images decoded and checked, ids chosen."""

    dataset: CocoInstances
    source_name: str
    new_categories: dict[int, str]
    image_ids: dict[int, int]
    prepared: dict[int, PreparedImage]
    masks: dict[int, EncodedMask]  # annotation id (as in the file) -> its mask
    report: ImportReport
