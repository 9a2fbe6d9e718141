"""Every key of the page, in one place: the keyboard map, the script that routes keys, and the help that lists them.

A key works wherever the focus is, except in a text field. While the canvas editor is shown its keys go to the
editor (`window.condinstEditor.key(action)`, `app/editor/editor.js`), which sends edits through the fast edit
channel; on the Click view and the other tabs the same keys press the page's buttons. Change a key here and the
editor, the page and the help (`?` on the canvas, the Help fold) all follow.

A key is written as the browser's ``KeyboardEvent.key`` with optional ``Ctrl+`` / ``Shift+`` in front (``Ctrl``
also means the Mac's Cmd key).
"""
from __future__ import annotations

import json

DIGITS = tuple("123456789")
# (action, keys, what it does). Editor actions: see `key()` in app/editor/editor.js; page actions: BUTTONS below.
KEYMAP: list[tuple[str, tuple[str, ...], str]] = [
    ("select", ("s",), "Select tool: a click selects the instance under it (again: the next one stacked there)"),
    ("brush", ("b",), "Brush: drag paints the selected instance (a click on another instance selects it)"),
    ("erase", ("e",), "Eraser: drag erases from the selected instance"),
    ("polygon", ("g",), "Polygon: click vertices, Enter or a click on the first vertex closes"),
    ("refine", ("c",), "Click-to-refine: click = object, right / Shift click = not object (a first click on "
                             "another instance selects it; Esc, then click: a new object there)"),
    ("class", DIGITS, "Class 1-9 of the list: the selected instance's class (nothing selected: "
                                  "the class of the next new instance)"),
    ("undo", ("Ctrl+z", "z"), "Undo"),
    ("redo", ("Ctrl+Shift+z", "Ctrl+y", "y"), "Redo"),
    ("delete", ("Delete", "Backspace"), "Delete the selected instance (nothing selected: the one under the pointer)"),
    ("overlaps", ("d",), "Resolve overlaps: keep the best of each group of duplicate masks"),
    ("escape", ("Escape",), "Cancel the polygon or the refine proposal; else deselect"),
    ("accept", ("Enter",), "Close the polygon / accept the refine proposal"),
    ("smaller", ("[",), "Brush smaller"),
    ("bigger", ("]",), "Brush bigger"),
    ("next", ("n",), "Next image"),
    ("previous", ("p",), "Previous image"),
    ("next_unreviewed", ("u",), "Next unreviewed image"),
    ("reviewed", ("r",), "Reviewed on / off"),
    ("hide", ("h",), "Hide / show the selected instance"),
    ("solo", ("o",), "Show only the selected instance / all"),
    ("previous_frame", (",",), "Previous video frame"),
    ("next_frame", (".",), "Next video frame"),
    ("point", ("a",), "Click view: Add at point tool"),
    ("paint", ("w",), "Click view: Paint new tool"),
    ("help", ("?",), "Show / hide this list of keys"),
]
EDITOR_ACTIONS = {"select", "brush", "erase", "polygon", "refine", "class", "undo", "redo", "delete", "overlaps",
                  "escape", "accept", "smaller", "bigger", "next", "previous", "next_unreviewed", "help"}
# Page buttons (CSS selectors) pressed by a key where the editor does not take it (Click view, other tabs).
BUTTONS = {"undo": "#undo", "redo": "#redo", "delete": "#delete", "next": "#next", "previous": "#previous",
           "next_unreviewed": "#next-unreviewed", "reviewed": "#reviewed input", "hide": "#hide", "solo": "#solo",
           "overlaps": "#resolve-overlaps", "previous_frame": "#previous-frame", "next_frame": "#next-frame",
           "select": '#tool input[value="select"]', "brush": '#tool input[value="brush"]',
           "erase": '#tool input[value="erase"]', "point": '#tool input[value="point"]',
           "paint": '#tool input[value="paint"]'}


def key_table() -> dict[str, str]:
    """{key as written in KEYMAP: action}."""
    return {key: action for action, keys, _ in KEYMAP for key in keys}


def help_rows() -> list[tuple[str, str]]:
    """(keys, what they do) for each action, in KEYMAP's order."""
    return [("1-9" if keys == DIGITS else " / ".join(keys), text) for _, keys, text in KEYMAP]


def help_markdown() -> str:
    return "\n".join(f"- `{keys}`: {text}" for keys, text in help_rows())


HOTKEYS_JS = """
<script>
// CondInst Studio keys (app/web/keys.py): one table, routed to the canvas editor while it is shown, else to the page.
window.condinstKeys = {table: %s, editor: %s, buttons: %s, help: %s};
document.addEventListener("keydown", (event) => {
  const tag = (event.target.tagName || "").toLowerCase();
  if (["input", "textarea", "select"].includes(tag) || event.target.isContentEditable || event.altKey) return;
  let name = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (event.key === "?" || (event.shiftKey && event.key.length === 1 && !/[a-z]/i.test(event.key))) name = event.key;
  else if (event.shiftKey) name = "Shift+" + name;
  if (event.ctrlKey || event.metaKey) name = "Ctrl+" + name;
  const keys = window.condinstKeys, action = keys.table[name];
  if (!action) return;
  const editor = window.condinstEditor;
  if (editor && editor.shown() && keys.editor.includes(action)) {
    if (editor.key(action, event.key) !== false) event.preventDefault();
    return;
  }
  const target = keys.buttons[action] && document.querySelector(keys.buttons[action]);
  if (target && !target.disabled && target.offsetParent !== null) { target.click(); event.preventDefault(); }
});
</script>
"""


def hotkeys_js() -> str:
    """The page's key script (for `gr.Blocks.launch(head=...)`)."""
    return HOTKEYS_JS % (json.dumps(key_table()), json.dumps(sorted(EDITOR_ACTIONS)), json.dumps(BUTTONS),
                         json.dumps(help_rows()))
