"""The app's structure, read from its source with `ast` (comments and docstrings are not code).

* All SQL lives in the storage layer (`app/store/`): no module outside it calls ``.execute(`` /
  ``.executemany(`` / ``.executescript(`` or holds SQL text in a string literal (f-strings included).
* Inside it, one path per job: one statement inserts image rows (`storage.add_image_row`, photos and video
  frames alike) and one module writes the review columns (`review_state`; the schema's migration aside).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
STORE = APP / "store"
# A statement as SQLite reads it, upper-case keywords as the code writes them (a UI text "Select an instance" or
# "delete" is not SQL): SELECT ... FROM, INSERT INTO, UPDATE <table> SET, DELETE FROM, CREATE/DROP/ALTER, PRAGMA.
SQL = re.compile(r"\bSELECT\b[\s\S]+\bFROM\b|\bSELECT\s+(1|COALESCE|COUNT|MAX|MIN)\b|\bINSERT\s+(OR\s+\w+\s+)?INTO\b"
                 r"|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\b(CREATE|DROP|ALTER)\s+(TABLE|INDEX|VIEW|TRIGGER)\b"
                 r"|\bPRAGMA\s+\w+|\bBEGIN\s+(IMMEDIATE|EXCLUSIVE|DEFERRED)\b")
EXECUTE = ("execute", "executemany", "executescript")


def sql_outside_store() -> list[str]:
    """'path:line: what' for every SQL call or SQL string literal in app/ outside app/store/."""
    found = []
    for path in sorted(APP.rglob("*.py")):
        if STORE in path.parents:
            continue
        where = path.relative_to(APP.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EXECUTE:
                found.append(f"{where}:{node.lineno}: .{node.func.attr}(")
            elif isinstance(node, ast.JoinedStr):  # an f-string's literal parts, joined as SQLite would read them
                text = "".join(v.value if isinstance(v, ast.Constant) else " x " for v in node.values)
                if SQL.search(text):
                    found.append(f"{where}:{node.lineno}: f-string {text[:50]!r}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{where}:{node.lineno}: {node.value[:50]!r}")
    return sorted(set(found))


def string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal of a module, an f-string's literal parts joined."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.JoinedStr):
            out.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else " x " for v in node.values)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
    return out


def test_the_sql_pattern_tells_sql_from_interface_text():
    for sql in ("SELECT id FROM images", "SELECT COALESCE(MAX(id), 0) FROM x", "INSERT OR IGNORE INTO categories",
                "UPDATE images SET reviewed = 1", "DELETE FROM instances", "PRAGMA user_version", "SELECT 1"):
        assert SQL.search(sql), sql
    for text in ("Select an instance first (click it on the image)", "Delete the selected instance", "select",
                 "Update the model", "Insert a point"):
        assert not SQL.search(text), text


def test_all_sql_is_in_the_storage_layer():
    """Observed on the code before: 23 SQL calls in 10 modules (review, propagation, tracks, sequences, imports,
    via, datumaro_import, import_sources, ml_backend/interop, ytvis_export)."""
    found = sql_outside_store()
    assert not found, "SQL outside app/store/ (move it into a store function):\n" + "\n".join(found)


def test_one_image_row_insert_and_one_review_state_writer():
    """Observed before: video frames inserted their image rows themselves (app/video/sequences.py), and the review
    columns were written by app/annotate/review.py, Workspace.set_reviewed and storage.touch_review; now
    one module writes them (app/store/storage.py, its review-state part)."""
    review_columns = re.compile(r"\bUPDATE\s+images\s+SET\b[^;]*\b(review_state|reviewed|review_threshold|reviewed_by|"
                                r"review_comment|changed_after_review)\s*=")
    inserts, review_writers = [], []
    for path in sorted(APP.rglob("*.py")):
        for line, text in string_literals(path):
            where = f"{path.relative_to(APP.parent)}:{line}"
            if re.search(r"\bINSERT\s+(OR\s+\w+\s+)?INTO\s+images\b", text):
                inserts.append(where)
            if review_columns.search(text) and path.name != "schema.py":
                review_writers.append(where)
    assert len(inserts) == 1 and inserts[0].startswith("app/store/storage.py"), inserts
    assert review_writers and all(w.startswith("app/store/storage.py") for w in review_writers), review_writers


def test_the_view_types_its_pending_states():
    """`View.refine` / `View.propagation` were typed `Any` to dodge an import of app.annotate / app.video."""
    tree = ast.parse((APP / "view.py").read_text(encoding="utf-8"))
    anys = [node.target.id for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name) and "Any" in ast.unparse(node.annotation)]
    assert not anys, f"app/view.py fields typed Any: {anys}"


def test_the_module_map_of_app_readme_lists_every_module():
    """Issue 21: a newcomer finds the room of any action from `app/README.md`'s module map (a folder row, such as
    `interop/ml_backend/`, covers the modules inside it)."""
    text = (APP / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.M))
    missing = []
    for path in sorted(APP.rglob("*.py")):
        name = path.relative_to(APP).as_posix()
        if path.name == "__init__.py":
            continue
        if name not in rows and not any(row.endswith("/") and name.startswith(row) for row in rows):
            missing.append(name)
    assert not missing, f"modules missing from app/README.md's module map: {missing}"
