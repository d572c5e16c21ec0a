"""The explanation panel under a generated result: pick a question and an output word; the source lights up with
its part in that word, and a "why not …?" word gives the difference in log-probability and its attribution."""
from __future__ import annotations

import gradio as gr

from ..attention import AttentionInput
from ..context import AppContext
from ..errors import UserError
from ..explanations import QUESTIONS, explain, output_choices, render_html
from ..gpu import on_gpu
from .common import TabHandle, guarded, loaded_of, status_html


def words_of(ctx: AppContext, record: dict | None) -> list[tuple[str, int]]:
    """The record's output tokens, as the word dropdown offers them (none before a result)."""
    if not record or not (record.get("attention") or {}).get("target"):
        return []
    return output_choices(loaded_of(ctx, record), AttentionInput(**record["attention"]))


def explain_record(ctx: AppContext, record: dict | None, question: str, word, why_not: str,
                   progress=None) -> tuple[str, str]:
    """(the explanation as HTML, the status line) for output token `word` of the result in `record`."""
    if not record:
        raise UserError("Run the task first: the panel explains the last result.")
    if word is None or word == "":
        raise UserError("Pick the output word to explain.")
    if question not in QUESTIONS:
        raise UserError(f"Pick one of the questions: {', '.join(QUESTIONS)}.")
    method = "contrastive" if (why_not or "").strip() else QUESTIONS[question]
    e = explain(loaded_of(ctx, record), AttentionInput(**record["attention"]), method, int(word),
                (why_not or "").strip(), progress=progress)
    return render_html(e), f"Explained output token {e.position} with {method.replace('_', ' ')}."


def build(ctx: AppContext, handle: TabHandle) -> dict:
    with gr.Accordion("Explain", open=False, elem_classes=["explain-panel"]):
        question = gr.Dropdown(list(QUESTIONS), value=next(iter(QUESTIONS)), label="Question",
                               elem_classes=["explain-question"])
        with gr.Row():
            word = gr.Dropdown([], value=None, label="Output word", elem_classes=["explain-word"])
            why_not = gr.Textbox(label="Why not …?", placeholder="a word you expected instead (optional)",
                                 elem_classes=["explain-why-not"])
        with gr.Row():
            go = gr.Button("Explain", elem_classes=["explain-go"])
            stop = gr.Button("Stop", variant="stop", elem_classes=["explain-stop"])
        status = gr.HTML()
        shown = gr.HTML(elem_classes=["explain-view"])

    def new_result(record):
        choices = words_of(ctx, record)
        return {word: gr.Dropdown(choices=choices, value=choices[0][1] if choices else None), shown: "",
                status: ""}

    def on_explain(record, question_v, word_v, why_not_v, progress=gr.Progress()):
        report = (lambda done, total: progress((done, total), desc="integrated gradients steps"))
        text, line = explain_record(ctx, record, question_v, word_v, why_not_v, report)
        return {shown: text, status: status_html(line)}

    handle.record.change(guarded(status, new_result), [handle.record], [word, shown, status],
                         api_visibility="private")
    event = go.click(on_gpu(guarded(status, on_explain, (shown,))), [handle.record, question, word, why_not],
                     [shown, status], api_visibility="private")
    stop.click(None, None, None, cancels=[event], api_visibility="private")
    return {"question": question, "word": word, "why_not": why_not, "go": go, "shown": shown, "status": status}
