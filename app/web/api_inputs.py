"""What the HTTP API accepts: every event's input values checked before its handler runs.

Gradio turns a client's value into what a handler takes with the input component's `preprocess`. A
value of the wrong type (a string for a number, None for a slider, a list, NaN) made that raise a
TypeError inside Gradio: a traceback in the server log and "Could not preprocess input component"
for the client. `checked(fn, inputs)` wraps a handler instead: the event runs with Gradio's
preprocessing off (`needs_preprocess(inputs)` is False unless a file comes in) and each value is
checked here against its component and the handler's parameter, then converted as Gradio would:

    Number (precision 0)      a whole number (an int, or a float without fraction): int
    Number                    a finite number: float
    Slider                    a finite number in [minimum, maximum]: float
    Checkbox                  true or false
    Textbox                   text (None is ""), at most MAX_TEXT characters
    Dropdown, Radio           None or a value: a whole number where the parameter says `int`, text
                              where it says `str`, else either (or a finite number); a Radio's value
                              is one of its choices
    CheckboxGroup, Dropdown   a list of such values (multiselect)
    State, File, ...          untouched (files keep Gradio's preprocessing)

A Number or Slider with `minimum` / `maximum` is held to them; without, whole numbers stay within
SQLite's integers (ids) and other numbers within +-MAX_NUMBER. None is taken for a number only where
the handler's parameter says so (`int | None`, or a default of None). A refused value is a
`gr.Error` naming the parameter and what it expects ("instance_id: expects a whole number ...,
got 'x'"), sent to the client and not printed in the server log. What a value means (an
instance of this image, a frame of this video) is the service's to check, as for the browser.
"""
from __future__ import annotations

import functools
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

INT_MIN, INT_MAX = -(2 ** 63), 2 ** 63 - 1  # SQLite's INTEGER: any id or count the app stores
MAX_NUMBER = 1e9  # no coordinate, size or count the app takes is larger
MAX_TEXT = 1_000_000  # characters of one text value (a polygon's points are a few kB)
MAX_ITEMS = 10_000  # values in one list (class filter, samples)
_SPECIAL = ("Request", "EventData", "SelectData")  # what Gradio passes itself (by annotation)
_PLAIN = (gr.State, gr.Number, gr.Slider, gr.Checkbox, gr.Textbox, gr.Dropdown, gr.Radio, gr.CheckboxGroup)


class InputRefused(gr.Error):
    """A value the HTTP API does not take: its message goes to the client, nothing to the log."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Rule:
    """How one input is checked: `kind` ("int", "float", "bool", "text", "choice", "list" or "any"),
    its name for messages, bounds of a number, the kind of a choice's values ("int", "text", "any")."""

    kind: str
    name: str
    low: float | None = None
    high: float | None = None
    optional: bool = False
    element: str = "any"
    choices: tuple = ()

    def refuse(self, expected: str, value: Any) -> InputRefused:
        return InputRefused(f"{self.name}: expects {expected}, got {_shown(value)}")

    def check(self, value: Any) -> Any:
        if self.kind == "any":
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise self.refuse("true or false", value)
            return value
        if self.kind == "text":
            if value is None:
                return ""
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise self.refuse(f"text (at most {MAX_TEXT} characters)", value)
            return value
        if self.kind in ("int", "float"):
            return self._number(value)
        if self.kind == "list":
            if value is None:
                return []
            if not isinstance(value, list) or len(value) > MAX_ITEMS:
                raise self.refuse(f"a list of at most {MAX_ITEMS} values", value)
            return [self._choice(v) for v in value]
        return self._choice(value)  # "choice"

    def _number(self, value: Any) -> int | float | None:
        whole = self.kind == "int"
        low = (INT_MIN if whole else -MAX_NUMBER) if self.low is None else self.low
        high = (INT_MAX if whole else MAX_NUMBER) if self.high is None else self.high
        if value is None and self.optional:
            return None
        if not _is_number(value, whole) or not low <= value <= high:
            if self.low is None and self.high is None:
                expected = "a whole number (|n| < 2**63)" if whole else f"a finite number (|x| <= {MAX_NUMBER:g})"
            else:
                expected = f"{'a whole number' if whole else 'a number'} from {low:g} to {high:g}"
            raise self.refuse(expected + (" or null" if self.optional else ""), value)
        return int(value) if whole else float(value)

    def _choice(self, value: Any) -> Any:
        if value is None:
            return None
        if self.element == "int":
            if not _is_number(value, whole=True) or not INT_MIN <= value <= INT_MAX:
                raise self.refuse("a whole number (an id) or null", value)
            value = int(value)
        elif self.element == "text":
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise self.refuse("text or null", value)
        elif not ((isinstance(value, str) and len(value) <= MAX_TEXT)
                  or (_is_number(value, whole=False) and abs(value) <= INT_MAX)):
            raise self.refuse("one of the offered values (text or a number) or null", value)
        if self.choices and value not in self.choices:
            raise self.refuse(f"one of {', '.join(map(repr, self.choices))}", value)
        return value


def _is_number(value: Any, whole: bool) -> bool:
    """An int (not a bool) or a finite float (with no fraction when `whole`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not isinstance(value, float) or (math.isfinite(value) and (not whole or value.is_integer()))


def _name(component, param: inspect.Parameter | None) -> str:
    """The parameter's name as API clients see it (Gradio names them after the handler's parameters)."""
    if param is not None:
        return param.name
    label = getattr(component, "label", None)
    return "_".join(str(label).lower().split())[:40] if label else type(component).__name__.lower()


def rule_for(component, param: inspect.Parameter | None = None, bounds: tuple | None = None) -> Rule:
    """The Rule of an input component (`param`: the handler's parameter that takes it; `bounds`:
    (low, high) replacing the component's own, for a slider whose range changes per page)."""
    name = _name(component, param)
    hint = "" if param is None or param.annotation is inspect.Parameter.empty else str(param.annotation)
    optional = param is not None and (param.default is None or "None" in hint)
    element = "int" if re.search(r"\bint\b", hint) else "text" if re.search(r"\bstr\b", hint) else "any"
    if isinstance(component, (gr.Slider, gr.Number)):
        low, high = bounds or (component.minimum, component.maximum)
        return Rule("int" if component.precision == 0 else "float", name, low, high, optional)
    if isinstance(component, gr.Checkbox):
        return Rule("bool", name)
    if isinstance(component, gr.Textbox):
        return Rule("text", name)
    if isinstance(component, gr.CheckboxGroup) or (isinstance(component, gr.Dropdown) and component.multiselect):
        return Rule("list", name, element=element)
    if isinstance(component, gr.Radio):
        return Rule("choice", name, element=element, choices=tuple(value for _, value in component.choices))
    if isinstance(component, gr.Dropdown):
        return Rule("choice", name, element=element)
    return Rule("any", name)


def needs_preprocess(inputs) -> bool:
    """Whether an event needs Gradio's preprocessing (a file, an image, ...), else its plain values are
    checked here only."""
    return any(not isinstance(c, _PLAIN) for c in inputs or [])


def _special(param: inspect.Parameter) -> bool:
    if isinstance(param.default, gr.Progress):
        return True
    hint = param.annotation
    name = hint if isinstance(hint, str) else getattr(hint, "__name__", "")
    return name.split("|")[0].strip().rsplit(".", 1)[-1] in _SPECIAL


def checked(fn: Callable, inputs, bounds: dict[str, tuple] | None = None) -> Callable:
    """`fn` with each value from an input component checked first (InputRefused on a wrong one).

    `inputs`: the event's input components, in the order Gradio passes them; `bounds`: {label:
    (low, high)} for numbers whose range the page changes (a video's frame slider)."""
    inputs = list(inputs or [])
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    positions = [i for i, p in enumerate(params) if not _special(p)][: len(inputs)]
    rules = {i: rule_for(c, params[i], (bounds or {}).get(getattr(c, "label", None)))
             for i, c in zip(positions, inputs)}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = list(args)
        for i, rule in rules.items():
            if i < len(args):
                args[i] = rule.check(args[i])
        return fn(*args, **kwargs)

    return wrapper
