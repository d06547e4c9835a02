"""Form components whose bad values reach the handler, so the message about them is the workbench's own."""

from __future__ import annotations

from typing import Any

import gradio as gr

from gradio.events import Dependency

class NumberField(gr.Number):
    """A gr.Number that hands a value it cannot read ("abc", a huge or non-finite number) to the handler as
    given, where the form parser names the field and says what is wrong, instead of failing in Gradio."""

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except (TypeError, ValueError, OverflowError):
            return payload
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component