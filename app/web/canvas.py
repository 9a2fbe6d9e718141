"""The canvas editor's side of the server: what the browser canvas is sent, and its files.

The editor (`app/web/editor/editor.html|.css|.js`, hosted by a `gr.HTML`) draws the picture and the
masks itself, at any zoom. The server is the single source of truth: after every event it sends
a *scene* (the component's value, JSON text; or the answer of the edit channel, `app.web.edit_channel`):

    {"seq", "image": {"id", "width", "height", "pw", "ph", "src"?}, "selected", "opacity",
     "instances": [{"id", "color", "label", "box": [x, y, w, h], "key", "png"}], "refine": {...} | null}

Masks travel as display-size crops (preview pixels, `box`) in colour PNG data URLs (a few hundred
bytes each; `key` names the picture, and the edit channel leaves out, ``"png": null``, the pictures the
canvas holds); the picture's JPEG data URL only when the canvas does not hold that image yet
(`View.canvas_image`). Edits go to the edit channel: geometry in original-image pixels.
"""
from __future__ import annotations

import base64
import itertools
import json
import zlib
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import supervision as sv

from app.store.masks import preview_size, shrink_mask
from app.errors import AppError
from app.store.records import is_crowd
from app.view import View, visible
from app.store.workspace_slot import WorkspaceSlot

EDITOR_DIR = Path(__file__).resolve().parent / "editor"
EDITOR_JS = ("editor.js", "editor_tiles.js", "editor_video.js", "editor_empty.js", "editor_page.js")  # one function body, in this order (the others use editor.js's names)
PALETTE = sv.ColorPalette.DEFAULT
REFINE_COLOR = (255, 255, 255)
CROWD_COLOR = (160, 160, 160)  # crowd regions: grey, hatched
_SEQ = itertools.count(1)
TILE_MAX_SIDE = 2048  # px of a full-resolution tile (a canvas a few screens wide at 1:1)
# full colour resolution (no 4:2:0 chroma halving: at 1:1 every pixel shows): fine detail within ~3 levels
TILE_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


def editor_files() -> dict[str, str]:
    """html_template, css_template and js_on_load of the editor component."""
    return {"html_template": (EDITOR_DIR / "editor.html").read_text(),
            "css_template": (EDITOR_DIR / "editor.css").read_text(),
            "js_on_load": "\n".join((EDITOR_DIR / name).read_text() for name in EDITOR_JS)}


def data_url(kind: str, data: bytes) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def mask_png(preview: np.ndarray, rgb: tuple[int, int, int], hatched: bool = False) -> tuple[list[int], str] | None:
    """A display-size bool mask -> ([x, y, w, h] of its box, PNG data URL of the coloured box crop);
    ``hatched``: diagonal stripes with a faint fill between them (crowd regions)."""
    ys, xs = np.nonzero(preview)
    if not len(ys):
        return None
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    crop = preview[y0:y1, x0:x1]
    bgra = np.zeros(crop.shape + (4,), np.uint8)
    bgra[crop] = (rgb[2], rgb[1], rgb[0], 255)
    if hatched:
        yy, xx = np.mgrid[y0:y1, x0:x1]
        bgra[..., 3] = np.where(crop, np.where((xx + yy) % 8 < 3, 255, 70), 0).astype(np.uint8)
    ok, png = cv2.imencode(".png", bgra, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    return [x0, y0, x1 - x0, y1 - y0], data_url("png", png.tobytes())


def color_of(instance_id: int) -> tuple[int, int, int]:
    return PALETTE.by_idx(int(instance_id)).as_rgb()


class CanvasScenes:
    def __init__(self, workspace: WorkspaceSlot, cache_size: int = 4096):
        self.slot = workspace
        self._pngs: OrderedDict = OrderedDict()  # (instance id, mask bytes) -> (box, data URL)
        self.cache_size = cache_size
        self._full = None  # (image id, (H, W, 3) RGB) of the last tile's image

    def instance_png(self, inst, scale: float):
        """(box, PNG data URL, key) of an instance's display-size mask; unchanged masks are not encoded again."""
        key = (inst.id, inst.preview_counts or inst.rle_counts)
        if key in self._pngs:
            self._pngs.move_to_end(key)
            return self._pngs[key]
        preview = inst.preview
        bx, by, bw, bh = inst.bbox  # look only inside the box (in preview pixels, one pixel of margin)
        y0, x0 = max(int(by * scale) - 1, 0), max(int(bx * scale) - 1, 0)
        y1, x1 = int(np.ceil((by + bh) * scale)) + 1, int(np.ceil((bx + bw) * scale)) + 1
        drawn = mask_png(preview[y0:y1, x0:x1], *((CROWD_COLOR, True) if is_crowd(inst) else (color_of(inst.id),)))
        if drawn is not None:
            box, url = drawn
            drawn = ([box[0] + x0, box[1] + y0, box[2], box[3]], url, "%08x" % zlib.crc32(url.encode("ascii")))
        self._pngs[key] = drawn
        if len(self._pngs) > self.cache_size:
            self._pngs.popitem(last=False)
        return drawn

    def scene(self, view: View) -> tuple[View, str]:
        """(the view, noting that the canvas holds its image; the scene JSON)."""
        view, scene = self.scene_dict(view)
        return view, json.dumps(scene)

    def picture(self, image_id: int, with_src: bool = True) -> dict:
        """An image as the canvas needs it: ids, sizes, preview size and (``with_src``) its JPEG data URL."""
        ws = self.slot.ws
        record = ws.get_image_record(image_id)
        ph, pw = preview_size(record.height, record.width)
        image = {"id": record.id, "width": record.width, "height": record.height, "pw": pw, "ph": ph}
        if with_src:
            ok, jpeg = cv2.imencode(".jpg", ws.get_preview(record.id)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            image["src"] = data_url("jpeg", jpeg.tobytes())
        return image

    def tile(self, image_id: int, box) -> dict:
        """A full-resolution crop of an image for the canvas zoomed in past its preview: ``box`` [x, y, w, h] in
        original pixels (clipped to the image; at most TILE_MAX_SIDE a side) -> {"id", "box" (as clipped), "src":
        JPEG data URL}. The last image decoded is kept, so that panning around it does not decode it again."""
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                for v in box)):
            raise AppError("A tile is [x, y, w, h] in whole image pixels.")
        if self._full is None or self._full[0] != image_id:
            self._full = None  # the old one goes before the new one is decoded
            self._full = (image_id, self.slot.ws.get_image(image_id))
        rgb = self._full[1]
        height, width = rgb.shape[:2]
        x0, y0 = min(max(box[0], 0), width - 1), min(max(box[1], 0), height - 1)
        x1, y1 = min(x0 + min(max(box[2], 1), TILE_MAX_SIDE), width), min(y0 + min(max(box[3], 1), TILE_MAX_SIDE), height)
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[y0:y1, x0:x1, ::-1]), TILE_JPEG)
        return {"id": image_id, "box": [x0, y0, x1 - x0, y1 - y0], "src": data_url("jpeg", jpeg.tobytes())}

    def scene_dict(self, view: View, have: dict[int, str] | None = None,
                   pictures: set[int] | None = None) -> tuple[View, dict]:
        """(the view, noting that the canvas holds its image; the scene). ``have``: {instance id: key} of the
        masks the canvas holds already: their pictures are left out (``"png": None``); ``pictures``: the
        images whose picture the canvas holds (prefetched), also left out."""
        have = have or {}
        if self.slot.workspace is None or view.image_id is None:
            return replace(view, canvas_image=None), {"seq": next(_SEQ), "image": None, "instances": []}
        ws = self.slot.ws
        record = ws.get_image_record(view.image_id)
        image = self.picture(record.id, with_src=view.canvas_image != record.id and record.id not in (pictures or ()))
        pw = image["pw"]
        names = {c.id: c.name for c in ws.categories()}
        instances = []
        scale = pw / record.width
        for inst in visible(ws, view, include_hidden=False):
            drawn = self.instance_png(inst, scale)
            if drawn is None:
                continue
            label = f"#{inst.id} {names.get(inst.category_id, inst.category_id)}" + (" crowd" if is_crowd(inst) else "")
            color = CROWD_COLOR if is_crowd(inst) else color_of(inst.id)
            box, url, key = drawn
            instances.append({"id": inst.id, "color": "#%02x%02x%02x" % color, "label": label, "box": box,
                              "key": key, "png": None if have.get(inst.id) == key else url})
        refine = None
        if view.refine is not None:
            drawn = mask_png(shrink_mask(view.refine.mask, (image["ph"], pw)), REFINE_COLOR)
            refine = {"positive": view.refine.positive, "negative": view.refine.negative, "target": view.refine.target,
                      "box": drawn[0] if drawn else None, "png": drawn[1] if drawn else None}
        scene = {"seq": next(_SEQ), "image": image, "instances": instances, "selected": view.selected,
                 "opacity": view.opacity, "labels": view.labels, "refine": refine,
                 "classes": [[name, cid] for cid, name in names.items()]}
        return replace(view, canvas_image=record.id), scene
