"""`guarded`: how every event handler meets an expected failure.

An expected failure (`condinst.errors.UserError`, which every app error subclasses, or an OSError
naming a file) becomes a non-blocking warning toast plus "**Not done:** ..." in the status output;
every other output is left as it was (`gr.skip()`), so no output is replaced by an error overlay and
the page keeps serving. A `StaleEdit` (someone else changed the instance) can answer with a fresh view.
"""
from __future__ import annotations

import functools
import inspect

import gradio as gr

from app.store.history import StaleEdit
from condinst.errors import UserError, user_message

WARNING = "**Not done:** "


def guarded(fn, n_outputs: int, message_index: int | None, context=None, conflict=None, sent=None):
    """Wrap a handler: an AppError becomes a toast + status message, other outputs are skipped.

    `context(args, request)` (optional) is entered around the call with Gradio's ``gr.Request``
    (who is acting, see `app.store.history`); the wrapper asks Gradio for the request itself. `conflict(view,
    message)` (optional) answers a `StaleEdit` with a fresh view of the annotate outputs instead.
    `sent(result)` (optional) sees what the handler returns (inside the context).
    """

    def call(args, kwargs):
        try:
            result = fn(*args, **kwargs)
            if sent is not None:
                sent(result)
            return result
        except StaleEdit as exc:
            if conflict is None:
                raise
            values = list(conflict(args[0], str(exc)))
            result = tuple(values + [gr.skip()] * (n_outputs - len(values)))
            if sent is not None:
                sent(result)
            return result

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        request = next((a for a in args if isinstance(a, gr.Request)), None)
        if context is not None and not takes_request:
            args = tuple(a for a in args if not isinstance(a, gr.Request))
        try:
            if context is None:
                return call(args, kwargs)
            with context(args, request):
                return call(args, kwargs)
        except (UserError, OSError) as exc:  # a library's expected error (bad image, checkpoint) too
            message = user_message(exc)
            if message is None:
                raise
            gr.Warning(message)
            values = [gr.skip()] * n_outputs
            if message_index is not None:
                values[message_index] = WARNING + message
            return tuple(values) if n_outputs > 1 else values[0]

    signature = inspect.signature(fn)
    takes_request = any(p.annotation in (gr.Request, "gr.Request") for p in signature.parameters.values())
    if context is not None and not takes_request:  # ask Gradio for the request (the last positional argument)
        params = list(signature.parameters.values())
        cut = next((i for i, p in enumerate(params) if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)),
                   len(params))
        extra = inspect.Parameter("_request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                  annotation=gr.Request)
        wrapper.__signature__ = signature.replace(parameters=params[:cut] + [extra] + params[cut:])
        wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), "_request": gr.Request}
    return wrapper
