"""Question answering. The checkpoint decides how: one with a question-answering head marks the answer in the
context, with its score and the runners-up (extractive); a text-to-text one (mT0) writes the answer to an
editable xP3 prompt, optionally constrained to runs of the passage, and the answer is found again in the passage
and highlighted there, or flagged as not found. The status line says which way it answered and how it matched."""
from __future__ import annotations

import gradio as gr

from ..answering import answer_checkpoint, default_template, status_line
from ..context import AppContext
from ..gpu import on_gpu
from ..tasklist import TASKS
from ..tasks import as_plain, is_rtl
from . import attention_panel
from .common import (TabHandle, examples, guarded, model_picker, mount_panels, progress_reporter, run_record,
                     status_html)

TASK = "question_answering"


def build(ctx: AppContext) -> TabHandle:
    gr.Markdown(ctx.assets.help["question_answering"], elem_classes=["tab-help"])
    picker = model_picker(ctx, TASK)
    question = gr.Textbox(lines=1, label="Question", elem_id="qa-question")
    context = gr.Textbox(lines=6, label="Context (the passage)", elem_id="qa-context")
    examples(ctx.assets, TASK, [question, context], ("question", "context"))
    constrained = gr.Checkbox(False, label="Answer from the passage only",
                              info="Text-to-text checkpoints: constrained decoding, which can only write a run of "
                                   "the passage's tokens.", elem_id="qa-constrained")
    with gr.Accordion("Prompt template (text-to-text checkpoints)", open=False):
        template = gr.Textbox(default_template(), lines=4, label="Template",
                              info="{context} is replaced by the passage, {question} by the question. Cleared: "
                                   "xP3's template.", elem_id="qa-template")
    run = gr.Button("Answer", variant="primary", elem_id="qa-run")
    status = gr.HTML()
    answer = gr.Textbox(label="Answer", interactive=False, elem_id="qa-answer")
    highlighted = gr.HighlightedText(label="The answer in the context", show_legend=False, elem_id="qa-output")
    alternatives = gr.Dataframe(headers=["answer", "score", "start", "end"], label="Top alternatives",
                                interactive=False, wrap=True, visible=False, elem_id="qa-alternatives")
    record = gr.State(None)
    slot = gr.Column()
    handle = TabHandle(TASK, {"question": question, "context": context},
                       {"answer": answer, "highlighted": highlighted, "alternatives": alternatives},
                       {"template": template, "constrained": constrained}, picker, record, status, slot)
    mount_panels(ctx, handle)
    handle.extra["attention"] = attention_panel.build(ctx, handle)

    def run_answer(source, dtype, device, quant, question_v, context_v, template_v, constrained_v,
                   progress=gr.Progress()):
        loaded = ctx.load(TASK, source, dtype, device, quant, progress_reporter(progress))
        inputs = {"question": question_v, "context": context_v}
        result = answer_checkpoint(loaded, question_v, context_v, None, template_v, bool(constrained_v))
        rows = [[a.text, round(a.score, 4), a.start, a.end] for a in result.alternatives]
        message, kind = status_line(result, loaded.request.source)
        settings = {**result.settings, "method": result.method}
        return {answer: result.answer.text,
                highlighted: gr.HighlightedText(value=result.segments, rtl=is_rtl(context_v)),
                alternatives: gr.Dataframe(value=rows, visible=bool(rows)),
                status: status_html(message, kind, loaded.describe()),
                record: run_record(TASKS[TASK], loaded, inputs, result, as_plain(result), settings)}

    safe_run = on_gpu(guarded(status, run_answer, (answer, highlighted, alternatives, record)))
    run.click(safe_run, [*picker.components(), question, context, template, constrained],
              [answer, highlighted, alternatives, status, record], api_visibility="private",
              concurrency_id="models")
    return handle
