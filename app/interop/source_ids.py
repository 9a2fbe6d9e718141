"""Export ids: an imported instance's source ids (``meta["source_id"]``, ``meta["source_image_id"]``, see
`app.interop.import_ids`) come back on export where they clash with nothing; everything else keeps its workspace id.

    image_ids, annotation_ids = export_ids(snapshot)   # {workspace id: export id}

An image takes the source image id its imported instances agree on; an instance its source id. Ids
of what was not imported (or whose source id is taken) are claimed first, so they never change; a
source id another entry already claims falls back to the workspace id (or, when that is taken too,
a fresh id after all of them). So a dataset imported into an empty workspace exports with its own
ids (an image id 0 included), and an export never holds one id twice.
"""
from __future__ import annotations

from app.store.workspace import WorkspaceSnapshot


def _assign(wanted: dict[int, int | None]) -> dict[int, int]:
    """{workspace id: wanted export id or None} -> {workspace id: export id}, unique."""
    out = {wid: wid for wid, source in wanted.items() if source is None}
    used = set(out.values())
    fallback = []
    for wid, source in sorted((w, s) for w, s in wanted.items() if s is not None):
        if source not in used and source not in wanted or source == wid:  # another entry's own id is not taken
            out[wid] = source
            used.add(source)
        else:
            fallback.append(wid)
    next_id = max([0, *used, *wanted]) + 1
    for wid in fallback:
        if wid in used:
            out[wid], next_id = next_id, next_id + 1
        else:
            out[wid] = wid
        used.add(out[wid])
    return out


def _source(meta: dict | None, key: str) -> int | None:
    value = (meta or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63 else None


def export_ids(snapshot: WorkspaceSnapshot) -> tuple[dict[int, int], dict[int, int]]:
    """({workspace image id: export id}, {instance id: export id}) for the snapshot's images and instances."""
    images: dict[int, int | None] = {}
    instances: dict[int, int | None] = {}
    for image in snapshot.images:
        sources = {_source(i.meta, "source_image_id") for i in snapshot.instances[image.id]}
        images[image.id] = sources.pop() if len(sources) == 1 else None  # none, or not agreeing: its own id
        for instance in snapshot.instances[image.id]:
            instances[instance.id] = _source(instance.meta, "source_id")
    return _assign(images), _assign(instances)
