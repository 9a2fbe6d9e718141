"""A Label Studio project's labeling config, read for what CondInst can fill in.

    config = parse_label_config(xml)          # LabelConfigError: one line saying what is missing
    labels = match_labels(config.labels, ["date", "fig", "hazelnut"])

CondInst needs an ``<Image>`` and, pointing at it (``toName``), a ``<BrushLabels>`` (masks, sent as
Label Studio's brush RLE) or a ``<PolygonLabels>`` (simplified polygons). Optional:
``<KeyPointLabels>`` for click-to-refine (``smart="true"`` in Label Studio) and ``<RectangleLabels>``
for a box around the object. Labels are matched to the model's class names exactly, else ignoring
case, spaces, ``-`` and ``_``; names that match no class are reported, never guessed.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from app.errors import AppError

MAX_CONFIG_BYTES = 512 * 1024
MASK_TAGS = {"brushlabels": "brush", "polygonlabels": "polygon"}


class LabelConfigError(AppError):
    """The labeling config cannot be used by this backend; the message says why."""


@dataclass(frozen=True)
class LabelConfig:
    """What the backend reads and writes in a project (tag names as in the XML)."""

    image: str  # the <Image> name: results' to_name
    value: str  # the task data key holding the image URL ($image -> "image")
    kind: str  # "brush" or "polygon"
    from_name: str  # the <BrushLabels>/<PolygonLabels> name
    labels: tuple[str, ...]
    keypoints: str | None = None  # the <KeyPointLabels> name (clicks), if any
    rectangles: str | None = None  # the <RectangleLabels> name (a box), if any

    @property
    def result_type(self) -> str:
        return "brushlabels" if self.kind == "brush" else "polygonlabels"


@dataclass(frozen=True)
class LabelMatch:
    """Project labels <-> model class indices."""

    to_class: dict[str, int]
    to_label: dict[int, str]
    unknown: tuple[str, ...] = ()  # project labels no model class has
    unused: tuple[str, ...] = field(default=())  # model classes the project does not label

    def note(self) -> str:
        parts = []
        if self.unknown:
            parts.append(f"labels the model does not know (left to annotators): {', '.join(self.unknown)}")
        if self.unused:
            parts.append(f"model classes the project has no label for (not predicted): {', '.join(self.unused)}")
        return "; ".join(parts)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def parse_label_config(xml: str) -> LabelConfig:
    """The backend's view of a labeling config; LabelConfigError if it has nothing CondInst can fill."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("The project has no labeling config.")
    if len(xml.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise LabelConfigError(f"The labeling config is larger than {MAX_CONFIG_BYTES // 1024} KiB.")
    if re.search(r"<!(DOCTYPE|ENTITY)", xml, re.IGNORECASE):
        raise LabelConfigError("The labeling config declares a DOCTYPE or entities; Label Studio configs do not.")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"The labeling config is not valid XML: {exc}.") from None
    images = {el.get("name"): (el.get("value") or "") for el in root.iter() if _local(el.tag) == "image"}
    images = {name: value for name, value in images.items() if name}
    if not images:
        raise LabelConfigError("The labeling config has no <Image> tag: CondInst segments images.")
    masks = [el for el in root.iter() if _local(el.tag) in MASK_TAGS and el.get("toName") in images]
    if not masks:
        raise LabelConfigError("The labeling config has no <BrushLabels> or <PolygonLabels> pointing at an "
                               f"<Image> ({', '.join(images)}): add one whose labels are the model's classes.")
    tag = masks[0]
    image = tag.get("toName")
    value = images[image]
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f'The <Image name="{image}"> value must name a task field, like value="$image".')
    labels = tuple(el.get("value") for el in tag if _local(el.tag) == "label" and el.get("value"))
    if not labels:
        raise LabelConfigError(f'<{tag.tag} name="{tag.get("name")}"> has no <Label value="..."/> entries.')

    def named(kind: str) -> str | None:
        found = [el.get("name") for el in root.iter() if _local(el.tag) == kind and el.get("toName") == image]
        return found[0] if found else None

    return LabelConfig(image=image, value=value[1:], kind=MASK_TAGS[_local(tag.tag)], from_name=tag.get("name") or "",
                       labels=labels, keypoints=named("keypointlabels"), rectangles=named("rectanglelabels"))


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


def find_label(name: str | None, labels: tuple[str, ...] | list[str]) -> str | None:
    """The entry of `labels` named `name` (exactly, else loosely), or None."""
    if not isinstance(name, str):
        return None
    if name in labels:
        return name
    return next((label for label in labels if _key(label) == _key(name)), None)


def match_labels(labels: tuple[str, ...] | list[str], class_names: list[str]) -> LabelMatch:
    """Each project label to the model class of the same name (exactly, else loosely; see the module)."""
    exact = {name: k for k, name in enumerate(class_names)}
    loose: dict[str, int] = {}
    for k, name in enumerate(class_names):
        loose.setdefault(_key(name), k)
    to_class: dict[str, int] = {}
    unknown = []
    for label in labels:
        k = exact.get(label, loose.get(_key(label)))
        if k is None:
            unknown.append(label)
        else:
            to_class[label] = k
    to_label: dict[int, str] = {}
    for label, k in to_class.items():
        to_label.setdefault(k, label)
    unused = tuple(name for k, name in enumerate(class_names) if k not in to_label)
    return LabelMatch(to_class, to_label, tuple(unknown), unused)
