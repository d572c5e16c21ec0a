"""The text formats the app writes, each defined once (no torch, no Gradio: the annotation store uses them too).

The span markers are `model.textgen.MARKER` (`<extra_id_N>`); the question/context format is here.
"""
from __future__ import annotations


def qa_prompt(question: str, context: str) -> str:
    """A question and its context as one text: what a text-to-text QA checkpoint reads (given stripped
    values), and how annotations and batch rows record a QA input (given the values as typed)."""
    return f"question: {question} context: {context}"
