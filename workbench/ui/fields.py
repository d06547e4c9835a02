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
