"""Form components whose bad values reach the handler, so the message about them is the workbench's own."""

from __future__ import annotations

from typing import Any

import gradio as gr


def number_field(*args: Any, **kwargs: Any) -> gr.Number:
    """A gr.Number that hands a value it cannot read ("abc", a non-finite number) to the handler as given,
    where the form parser names the field and says what is wrong, instead of failing inside Gradio.

    The instance's `preprocess` is wrapped rather than subclassed: Gradio writes a .pyi stub next to the
    module of every component subclass.
    """
    field = gr.Number(*args, **kwargs)
    strict = field.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return strict(payload)
        except (TypeError, ValueError, OverflowError):
            return payload

    field.preprocess = preprocess
    return field


def edited(component: gr.components.Component):
    """The event of `component` that fires on every edit by the user.

    Gradio 6.31's Textbox sends `input` on keypress only, so deleting, cutting or pasting text
    left the value on the server stale; its `change` fires on every new value (also one set by a handler).
    """
    return component.change if isinstance(component, gr.Textbox) else component.input
