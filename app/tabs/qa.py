"""Question answering: extractive (a QA head marks the answer in the context, with its score and the runners-up)
or generative (a text-to-text checkpoint answers "question: … context: …")."""
from __future__ import annotations

import gradio as gr

from ..context import AppContext
from ..tasklist import TASKS
from ..tasks import Decoding, as_plain, is_rtl
from . import attention_panel
from .common import (TabHandle, examples, guarded, model_picker, mount_panels, progress_reporter, run_record,
                     status_html)

TASK = "question_answering"
GENERATIVE = "generative_qa"


def build(ctx: AppContext) -> TabHandle:
    gr.Markdown(ctx.assets.help["question_answering"], elem_classes=["tab-help"])
    mode = gr.Radio(["extractive", "generative"], value="extractive", label="Mode", elem_id="qa-mode")
    picker = model_picker(ctx, TASK)
    question = gr.Textbox(lines=1, label="Question", elem_id="qa-question")
    context = gr.Textbox(lines=6, label="Context", elem_id="qa-context")
    examples(ctx.assets, TASK, [question, context], ("question", "context"))
    run = gr.Button("Answer", variant="primary", elem_id="qa-run")
    status = gr.HTML()
    answer = gr.Textbox(label="Answer", interactive=False, elem_id="qa-answer")
    highlighted = gr.HighlightedText(label="The answer in the context", show_legend=False, elem_id="qa-output")
    alternatives = gr.Dataframe(headers=["answer", "score", "start", "end"], label="Top alternatives",
                                interactive=False, wrap=True)
    record = gr.State(None)
    slot = gr.Column()
    handle = TabHandle(TASK, {"question": question, "context": context},
                       {"answer": answer, "highlighted": highlighted, "alternatives": alternatives},
                       {"mode": mode}, picker, record, status, slot)
    mount_panels(ctx, handle)
    handle.extra["attention"] = attention_panel.build(ctx, handle)

    def run_answer(mode_v, source, dtype, device, quant, question_v, context_v, progress=gr.Progress()):
        task = TASK if mode_v == "extractive" else GENERATIVE
        loaded = ctx.load(task, source, dtype, device, quant, progress_reporter(progress))
        inputs = {"question": question_v, "context": context_v}
        result = TASKS[task].run(loaded, inputs, Decoding())
        best = result.answer
        rows = [[a.text, round(a.score, 4), a.start, a.end] for a in result.alternatives]
        note = (f"Answer score {best.score:.3f}." if mode_v == "extractive" else
                "Generated answer" + (" (found in the context)." if best.start >= 0 else " (not verbatim in the "
                                                                                         "context)."))
        cut = " The context was cut to fit the model's input limit." if result.truncated else ""
        return {answer: best.text, highlighted: gr.HighlightedText(value=result.segments, rtl=is_rtl(context_v)),
                alternatives: rows, status: status_html(note + cut, "warn" if cut else "info", loaded.describe()),
                record: run_record(TASKS[task], loaded, inputs, result, as_plain(result), result.settings)}

    def switch_mode(mode_v):
        entry = ctx.assets.models[TASK if mode_v == "extractive" else GENERATIVE]
        return {picker.source: gr.Dropdown(choices=entry.suggestions or [entry.default], value=entry.default,
                                           info=entry.note)}

    safe_run = guarded(status, run_answer, (answer, highlighted, alternatives, record))
    run.click(safe_run, [mode, *picker.components(), question, context],
              [answer, highlighted, alternatives, status, record], api_visibility="private",
              concurrency_id="models")
    mode.change(switch_mode, [mode], [picker.source], api_visibility="private")
    return handle
