"""The workspace's classes (the ``categories`` table), inside the caller's transaction like `app.store.storage`.

    all_categories(conn)                     [Category] by id
    add_category(conn, name, id, super)      one new class (id defaults to max + 1), refusing a clash of id or name
    insert_categories(conn, {id: name})      new classes of an import plan (checked by the plan)
    missing_categories(conn, items)          which (id, name) pairs are absent; `ensure` adds them, keeping names
    rename_category(conn, id, name)          a new name, refusing a clash
    category_exists(conn, id)
"""
from __future__ import annotations

from typing import Iterable, Mapping

from app.errors import WorkspaceError
from app.store.records import Category, check_id, check_label


def all_categories(conn) -> list[Category]:
    return [Category(*row) for row in conn.execute("SELECT id, name, supercategory FROM categories ORDER BY id")]


def category_exists(conn, category_id: int) -> bool:
    return conn.execute("SELECT 1 FROM categories WHERE id = ?", (int(category_id),)).fetchone() is not None


def add_category(conn, name: str, category_id: int | None, supercategory: str) -> int:
    """Add a class; ``category_id`` defaults to max id + 1. Returns its id."""
    name = check_label(name)
    if category_id is None:
        category_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM categories").fetchone()[0]
    category_id = check_id(category_id, "Category id")
    if category_exists(conn, category_id):
        raise WorkspaceError(f"Category id {category_id} already exists")
    if conn.execute("SELECT 1 FROM categories WHERE name = ?", (name,)).fetchone():
        raise WorkspaceError(f"A class named {name!r} already exists")
    conn.execute("INSERT INTO categories (id, name, supercategory) VALUES (?, ?, ?)",
                 (category_id, name, str(supercategory)))
    return category_id


def insert_categories(conn, names: Mapping[int, str]) -> None:
    """Insert new ``id -> name`` classes (an import's plan chose free ids and names)."""
    conn.executemany("INSERT INTO categories (id, name) VALUES (?, ?)", list(names.items()))


def missing_categories(conn, items: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    present = {row[0] for row in conn.execute("SELECT id FROM categories")}
    return [(cid, name) for cid, name in items if cid not in present]


def ensure_categories(conn, items: Iterable[tuple[int, str]]) -> None:
    """Add every ``(id, name)`` that is missing (existing classes keep their names)."""
    conn.executemany("INSERT OR IGNORE INTO categories (id, name) VALUES (?, ?)", list(items))


def rename_category(conn, category_id: int, name: str) -> None:
    name = check_label(name)
    if conn.execute("SELECT 1 FROM categories WHERE name = ? AND id != ?",
                    (name, check_id(category_id, "Category id"))).fetchone():
        raise WorkspaceError(f"A class named {name!r} already exists")
    if conn.execute("UPDATE categories SET name = ? WHERE id = ?", (name, int(category_id))).rowcount == 0:
        raise WorkspaceError(f"Category {category_id} does not exist")
