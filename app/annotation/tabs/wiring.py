"""Where the annotation tabs' plain handlers meet Gradio.

A tab's handlers are module-level functions `handler(store, ident, *values)` that return `{name: value}`: names
are attribute paths into the tab's layout dataclass ("status", "fields.rating", "editor.views.A"). `bind` makes
the Gradio callback: it works out who asks from the request, calls the handler and puts each value on the
component its name points to. Tests call the handlers themselves, with an `Identity` and plain values.
"""
from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from ..rights import identify

PRIVATE = {"api_visibility": "private"}   # every tab event: only the `gr.api` endpoints are public


def component(layout: Any, name: str) -> Any:
    """The component `name` points to: "status" is `layout.status`, "editor.views.A" `layout.editor.views["A"]`."""
    found = layout
    for part in name.split("."):
        found = found[part] if isinstance(found, dict) else getattr(found, part)
    return found


def on_layout(layout: Any, values: dict[str, Any]) -> dict:
    """A handler's {name: value} as Gradio takes it: {component: value}."""
    return {component(layout, name): value for name, value in values.items()}


def under(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """`values` of a part of the layout, named from the whole: under("fields", {"rating": 4}) is
    {"fields.rating": 4}."""
    return {f"{prefix}.{name}": value for name, value in values.items()}


def bind(handler: Callable[..., dict], layout: Any, store: Any, settings: Any, *, event: str = "",
         progress: bool = False) -> Callable[..., dict]:
    """The Gradio callback for `handler(store, ident, *values)`. `event`: an attribute of the event's data passed
    after the values ("row_value", "index": a table's select). `progress`: the handler gets a tracked
    `progress=gr.Progress()` (a progress bar in the page)."""
    def call(request: Any, values: tuple, **extra: Any) -> dict:
        return on_layout(layout, handler(store, identify(request, settings), *values, **extra))

    # The request (and the event data, the progress) as leading positional parameters: Gradio injects only those.
    if event:
        def callback(request: gr.Request, evt: gr.SelectData, *values):
            return call(request, (*values, getattr(evt, event)))
    elif progress:
        def callback(request: gr.Request, progress=gr.Progress(), *values):
            return call(request, values, progress=progress)
    else:
        def callback(request: gr.Request, *values):
            return call(request, values)
    callback.__name__ = callback.__qualname__ = getattr(getattr(handler, "func", handler), "__name__", "handler")
    return callback
