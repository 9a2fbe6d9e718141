"""How an imported dataset's ids meet the workspace's: classes matched by name, new ids only where they clash.

    table = category_table(workspace_classes, dataset_classes, {"nut": "walnut"})   # --map-category nut=walnut
    ids = keep_or_renumber(source_ids, taken, "Image")                             # {source id: workspace id}

* Classes are matched by NAME: a source class takes the id of the workspace class of the same name (or
  of the name ``--map-category SRC=DST`` maps it to; SRC is the source class's name or id). A name the
  workspace lacks is added, with its source id when that id is free, else the next free id. Several
  source classes may map to one workspace class (they merge).
* Image and annotation ids are kept when they are positive and unused; an id the workspace already
  uses, a repeated id, or an id of 0 or below (workspace ids are positive) gets the next free id. The
  source id stays with the instance (``meta["source_id"]``, ``meta["source_image_id"]``), and
  `app.interop.source_ids` writes it again on export where it clashes with nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from app.store.records import MAX_ID
from training.data import DatasetError


@dataclass(frozen=True)
class CategoryRow:
    """One line of the mapping table: a source class and the workspace class it becomes."""

    source_id: int
    source_name: str
    target_id: int
    target_name: str
    status: str  # "existing" (the workspace has it), "new", "new id" (added under another id: its own was taken)

    def line(self) -> str:
        return f"{self.source_id} {self.source_name!r} -> {self.target_id} {self.target_name!r} ({self.status})"


def parse_category_map(items: list[str] | None) -> dict[str, str]:
    """``["SRC=DST", ...]`` (``--map-category``) -> {SRC: DST}; DatasetError for a malformed item."""
    mapping: dict[str, str] = {}
    for item in items or []:
        source, sep, target = str(item).partition("=")
        if not sep or not source.strip() or not target.strip():
            raise DatasetError(f"--map-category {str(item)[:80]!r}: expected SRC=DST (a source class name or id, "
                               "and a workspace class name)")
        mapping[source.strip()] = target.strip()
    return mapping


def category_table(existing: dict[int, str], source: list[tuple[int, str]], overrides: dict[str, str] | None = None
                   ) -> list[CategoryRow]:
    """The mapping of each source class (id, name) onto the workspace's classes (id -> name)."""
    overrides = dict(overrides or {})
    known = {name: cid for cid, name in existing.items()}
    unknown = [key for key in overrides if key not in {n for _, n in source} | {str(i) for i, _ in source}]
    if unknown:
        raise DatasetError(f"--map-category {unknown[0]}=...: the dataset has no class named (or numbered) "
                           f"{unknown[0]!r}")
    taken = set(existing)
    added: dict[str, int] = {}
    rows = []
    for cid, name in source:
        target = overrides.get(name, overrides.get(str(cid), name))
        if target in known:
            rows.append(CategoryRow(cid, name, known[target], target, "existing"))
            continue
        if target not in added:
            new_id = cid if 0 < cid <= MAX_ID and cid not in taken else max([0, *taken]) + 1
            if new_id > MAX_ID:
                raise DatasetError(f"class {name!r} needs a new id, but the ids in use reach 2**63 - 1")
            added[target] = new_id
            taken.add(new_id)
        status = "new" if added[target] == cid else "new id"
        rows.append(CategoryRow(cid, name, added[target], target, status))
    return rows


def keep_or_renumber(ids: list[int], taken: set[int], what: str) -> dict[int, int]:
    """{source id: workspace id} in the given order: kept when positive and free, else the next free id."""
    next_id = max([0, *taken, *(i for i in ids if i <= MAX_ID)]) + 1
    used = set(taken)
    chosen = {}
    for old in ids:
        if old in chosen:  # the same id twice in the file: the loader refuses it; never two rows for one id
            raise DatasetError(f"{what} id {old} appears twice")
        if 0 < old <= MAX_ID and old not in used:
            chosen[old] = old
        else:
            if next_id > MAX_ID:
                raise DatasetError(f"{what} id {old} needs a new positive id, but the ids in use reach 2**63 - 1 (SQLite's "
                                   "largest); renumber the file")
            chosen[old], next_id = next_id, next_id + 1
        used.add(chosen[old])
    return chosen
