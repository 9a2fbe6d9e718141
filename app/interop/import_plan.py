"""What an import will write and what it did: a checked COCO dataset's plan, the report, a segmentation's RLE.

`app.interop.imports` plans and writes COCO datasets, `app.interop.import_results` checks COCO results against a plan,
and the Label Studio converter (`app.interop.ml_backend.interop`) reads masks with the same `annotation_rle`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pycocotools import mask as mask_utils

from app.interop.import_ids import CategoryRow
from app.store.ingest import PreparedImage
from app.store.masks import EncodedMask
from training.data import CocoInstances
from training.entry_checks import compressed_rle_runs

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class ImportReport:
    """What an import did (or, for a preview, would do): counts, id changes, the class mapping, what was left out."""

    images: int = 0
    instances: int = 0
    crowd: int = 0
    categories: int = 0
    skipped: list[str] = field(default_factory=list)
    renumbered: dict[str, dict[int, int]] = field(default_factory=lambda: {"images": {}, "annotations": {}})
    mapping: list[CategoryRow] = field(default_factory=list)  # source class -> workspace class
    duplicates: list[str] = field(default_factory=list)  # images whose bytes are stored already: merged or skipped
    notes: list[str] = field(default_factory=list)  # how the input was read (e.g. CVAT crowd masks made editable)
    predictions: int = 0  # results: model instances added
    predictions_covered: int = 0  # results on top of a person's instance, not added
    reviewed_untouched: int = 0  # results for reviewed images, not added
    replaced: int = 0  # earlier untouched model instances replaced by the results
    preview: bool = False  # planned only: nothing was written

    def summary(self) -> str:
        """The first line says what happened; the lines after it the details (mapping, renumbering, skipped)."""
        verb = "would import" if self.preview else "imported"
        text = (f"{verb} {self.images} images, {self.instances} instances ({self.crowd} crowd), "
                f"{self.categories} new classes")
        if self.predictions or self.predictions_covered or self.reviewed_untouched:
            text += (f"; {self.predictions} model predictions added ({self.predictions_covered} left out on top "
                     f"of a person's instance, {self.reviewed_untouched} reviewed images untouched, "
                     f"{self.replaced} earlier model instances replaced)")
        lines = [text, *self.notes]
        plain = [row for row in self.mapping if (row.source_id, row.source_name) == (row.target_id, row.target_name)]
        added = sum(row.status == "new" for row in plain)
        if plain:
            lines.append(f"{len(plain)} classes under their own ids and names ({added} added, "
                         f"{len(plain) - added} already in the workspace)")
        if len(plain) < len(self.mapping):
            lines += ["classes (source id name -> workspace id name):"] + \
                [f"  {row.line()}" for row in self.mapping if row not in plain]
        for kind, mapping in self.renumbered.items():
            if mapping:
                lines.append(f"{kind} renumbered (id already used in the workspace or not positive; the source id "
                             "is kept as the instance's source id): " +
                             ", ".join(f"{old} -> {new}" for old, new in mapping.items()))
        if self.duplicates:
            lines += [f"{len(self.duplicates)} images already stored (same bytes):"] + \
                [f"  {line}" for line in self.duplicates]
        if self.skipped:
            lines += [f"skipped {len(self.skipped)} bad entries:"] + [f"  {line}" for line in self.skipped]
        return "\n".join(lines)


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
    new_categories: dict[int, str]  # workspace id -> name of the classes to add
    category_ids: dict[int, int]  # source class id -> workspace class id
    image_ids: dict[int, int]  # source image id -> workspace image id (a merged duplicate: the stored image)
    prepared: dict[int, PreparedImage]  # source image id -> the image to store (not for duplicates)
    annotation_ids: dict[int, int]  # source annotation id -> instance id
    masks: dict[int, EncodedMask]  # annotation id (as in the file) -> its mask
    crowd: set[int]  # annotation ids (as in the file) stored as crowd regions
    report: ImportReport
