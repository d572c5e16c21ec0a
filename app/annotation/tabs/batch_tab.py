"""The Batch tab: a file of inputs run through one task, then walked as an annotation queue; resumable.

Jobs and their results live in the annotation database (`app.annotation.batch`), so after a restart the job list offers
every job: running it again finishes the rows not yet processed, and the queue goes on where it stopped.

Layout (`layout`), the handlers (plain functions of the store, the identity and the values, returning
{name: value}; what runs models gets the app's context as `ctx`), then `wire`. Each message shows under the
buttons that caused it: the new job's, the job row's, the queue's.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.context import Context

from ..api import batch_process, judgement, parse_categories, parse_rating, require_judged
from ..batch import (StopRequests, annotate_row, annotation_for, create_job, get_job, import_outputs, job_progress,
                     job_settings, list_jobs, load_inputs, next_unannotated, queue_position, run_batch)
from ...cli import LARGE_FILE_ROWS, command_lines
from ...context import AppContext
from ...errors import UserError
from ..store import AnnotationStore
from ...tasks import Decoding, is_rtl
from .identity import AnnotatorName
from . import span_editor
from .panel import JudgementFields, fields, judgement_values
from .annotations import help_text
from .span_editor import Frame, SpanEditor, span_js
from .wiring import PRIVATE, bind, under
from ...tabs.common import (DECODING_ROWS, DecodingControls, ModelPicker, decoding_controls, model_picker,
                            progress_reporter, status_html)
from ...tasklist import JOB_TASKS, TASKS
from ..spans import load_protocols
from ..rights import OPEN, Identity, require_admin, require_save

QUEUE_TITLES = {"output": "Output: select a stretch to mark an error",
                "input": "Input: select what the output leaves out"}
# The decoding controls' names in their order (`decoding_controls()`): a handler reads their values by it.
DECODING_NAMES = tuple(name for row in DECODING_ROWS for name in row)


def job_choices(store: AnnotationStore) -> list[tuple[str, str]]:
    """(label, id) for the job dropdown, newest first: "name · task · 12 of 200 done (200 processed)"."""
    out = []
    for job in list_jobs(store):
        p = job_progress(store, job.id)
        out.append((f"{job.name} · {job.task} · {p.label} ({p.processed} processed) · {job.created_at[:16]}",
                    job.id))
    return out


def batch_command(ctx: AppContext, path: str | None, task: str, source: str, dtype: str, quant: str,
                  decoding: Decoding) -> str:
    """For a file of more than LARGE_FILE_ROWS rows (or more than this deployment runs), the markdown with the
    commands that run it on one process, one GPU machine or two machines (assets/help/batch_command.md); ""
    otherwise, or when the file cannot be read (creating the job says why)."""
    if not path:
        return ""
    try:
        rows = len(load_inputs(path, max_rows=2**62))
    except (ValueError, OSError):
        return ""
    if rows <= min(LARGE_FILE_ROWS, ctx.settings.batch_rows):
        return ""
    model = (source or "").strip() or ctx.assets.models[task].default
    blocks = [f"{title}:\n```bash\n" + "\n".join(lines) + "\n```"
              for title, lines in command_lines(task, model, Path(path).name, decoding, dtype=dtype,
                                                quantization=quant, demo=ctx.demo).items()]
    return ctx.assets.help.get("batch_command", "{commands}").format(rows=rows, limit=ctx.settings.batch_rows,
                                                                     commands="\n\n".join(blocks))


def queue_frame() -> Frame:
    """The frame of the queue's span editor."""
    return Frame("batch-queue", QUEUE_TITLES, load_protocols(), with_esa=True)


def decoding_of(values: list | tuple) -> Decoding:
    """The decoding controls' values (in `decoding_controls()` order) as a Decoding."""
    return DecodingControls(dict.fromkeys(DECODING_NAMES)).decoding(list(values))


@dataclass
class BatchTab:
    """The tab's components: a new job, an import, the job row, the annotation queue."""
    upload: gr.File
    task: gr.Dropdown
    picker: ModelPicker
    controls: DecodingControls
    command: gr.Markdown              # the batch command, for a large file
    create: gr.Button
    create_status: gr.HTML
    outputs_file: gr.File
    import_button: gr.Button
    import_status: gr.HTML
    job: gr.Dropdown
    refresh: gr.Button
    resume: gr.Button
    stop: gr.Button
    job_status: gr.HTML
    index: gr.State
    done: gr.HTML
    row_input: gr.Textbox
    row_output: gr.Textbox
    fields: JudgementFields
    editor: SpanEditor                # the row's error spans, highlighted and editable (ESA / MQM)
    prev: gr.Button
    save: gr.Button
    next: gr.Button
    skip: gr.Button
    status: gr.HTML                   # the queue's messages

    def shown(self) -> list:
        """What `show` updates (besides the status line of the button pressed)."""
        return [self.index, self.done, self.row_input, self.row_output, *self.fields.judgement(), self.status,
                *self.editor.load_outputs()]

    def settings(self) -> list:
        return [*self.picker.components(), *self.controls.inputs()]


# ---------------------------------------------------------------------------------------------------------------
# The handlers


def show(store: AnnotationStore, job_id: str | None, i: int | None, note: str = "", kind: str = "info",
         where: str = "status", ident: Identity = OPEN, frame: Frame | None = None) -> dict:
    """Everything the queue shows at row `i` of the job: input, output, an earlier judgement (one `ident` may
    see) or a fresh one; `note` goes to the status line `where` (the one under the button pressed)."""
    if not job_id:
        return {"done": status_html("Pick or create a job."), where: status_html(note, kind)}
    try:
        pos = queue_position(store, job_id, int(i or 0))
    except (KeyError, IndexError) as e:
        return {where: status_html(f"{e}", "error")}
    row = pos.row
    output = row.output if row.processed else ""
    if row.error and not row.processed:
        output_note = f"failed: {row.error} (run the job again to retry)"
    else:
        output_note = "" if row.processed else "not processed yet: run the job"
    earlier = store.get(row.annotation_id) if row.annotation_id else None
    if earlier is not None and not ident.sees_all and earlier.owner != ident.user:
        earlier = None   # someone else's judgement: not shown to another annotator
    if earlier is not None:
        judged = judgement_values(earlier.rating, earlier.corrected_output, earlier.error_categories, earlier.comment)
    else:
        judged = judgement_values()   # empty: "no correction given", never mistaken for "checked, correct"
    text = row.input_text
    line = f"{pos.label} · {pos.position_label}" + (" · annotated" if row.annotated else "")
    frame = frame or queue_frame()
    marked = span_editor.load(frame, {"output": output, "input": text}, get_job(store, job_id).task,
                              earlier.spans if earlier is not None else [],
                              (earlier.protocol or "none") if earlier is not None else frame.protocols.default,
                              earlier.esa_score if earlier is not None else None)
    return {**under("editor", marked), "index": pos.index, "done": status_html(line),
            "row_input": gr.Textbox(value=text, rtl=is_rtl(text)),
            "row_output": gr.Textbox(value=output, rtl=is_rtl(output), placeholder=output_note),
            **under("fields", judged),
            where: status_html(note or output_note, kind if note else ("warn" if output_note else "info"))}


def run(ctx: AppContext, store: AnnotationStore, job_id: str, progress: Any, where: str,
        stops: StopRequests) -> dict:
    """Runs (or resumes) the job; the queue at its first row, the outcome under `where`."""
    job_v = get_job(store, job_id)
    req = job_v.settings.get("request", {})
    loaded = ctx.load(job_v.task, req.get("source") or job_v.settings.get("model_id"), req.get("dtype", "auto"),
                      req.get("device", "auto"), req.get("quantization", "none"), progress_reporter(progress))
    decoding = Decoding(**job_v.settings.get("decoding", {}))
    try:
        result = run_batch(store, job_id, batch_process(job_v.task, loaded, decoding),
                           progress=lambda n, total: progress((n, total), desc=f"{n} of {total} rows processed"),
                           should_stop=stops.start(job_id))
    finally:
        stops.finish(job_id)
    note = f"Processed {result.processed} row(s) now; {result.skipped} were done before."
    if result.stopped:
        note = f"Stopped on request: {note} Run / resume finishes the rest."
    if result.failed:
        note += f" {result.failed} failed (their error is shown on the row; run again to retry)."
    return {**show(store, job_id, 0, note, "warn" if result.failed else "info", where),
            "job": gr.Dropdown(choices=job_choices(store), value=job_id)}


def create_and_run(store: AnnotationStore, ident: Identity, path, task_v, source, dtype, device, quant, *settings,
                   ctx: AppContext, stops: StopRequests, progress: Any = None) -> dict:
    """A job from the uploaded file (admins), run at once. `settings`: the decoding controls' values."""
    if not path:
        return {"create_status": status_html("Upload a CSV or JSONL file of inputs first.", "warn")}
    progress = progress or gr.Progress()
    try:
        require_admin(ident, "Creating batch jobs")
        inputs = load_inputs(path, max_rows=ctx.settings.batch_rows)
        spec = TASKS[task_v]
        if any(spec.missing(vars(x)) for x in inputs):
            columns = " and ".join(f"`{name}`" for name in spec.fields)
            many = len(spec.fields) > 1
            raise ValueError(f"{task_v} needs {'' if many else 'a '}{columns} column{'s' if many else ''} "
                             "on every row")
        decoding = decoding_of(settings)
        loaded = ctx.load(task_v, source, dtype, device, quant, progress_reporter(progress))
        new = create_job(store, inputs, task=task_v, settings=job_settings(loaded, decoding), source=Path(path).name)
    except (ValueError, UserError) as e:
        return {"create_status": status_html(f"No job created: {e}", "error")}
    try:
        return run(ctx, store, new.id, progress, "create_status", stops)
    except UserError as e:
        return {"create_status": status_html(f"Job created but not run: {e}", "error")}


def command_for(store: AnnotationStore, ident: Identity, path, task_v, source, dtype, device, quant, *settings,
                ctx: AppContext) -> dict:
    return {"command": batch_command(ctx, path, task_v, source, dtype, quant, decoding_of(settings))}


def import_output(store: AnnotationStore, ident: Identity, path) -> dict:
    """A job from the batch command's output file, its rows processed: the queue opens at its first row."""
    if not path:
        return {"import_status": status_html("Upload the .jsonl file the batch command wrote first.", "warn")}
    try:
        require_admin(ident, "Importing batch outputs")
        new = import_outputs(store, path)
    except (ValueError, OSError) as e:
        return {"import_status": status_html(f"Nothing imported: {e}", "error")}
    p = job_progress(store, new.id)
    note = f"Imported {new.total} row(s) as the job {new.name!r} ({p.processed} with an output)."
    return {**show(store, new.id, 0, note, where="import_status", ident=ident),
            "job": gr.Dropdown(choices=job_choices(store), value=new.id)}


def resume_it(store: AnnotationStore, ident: Identity, job_id, *, ctx: AppContext, stops: StopRequests,
              progress: Any = None) -> dict:
    if not job_id:
        return {"job_status": status_html("Pick a job to run or resume.", "warn")}
    try:
        require_admin(ident, "Running batch jobs")
        return run(ctx, store, job_id, progress or gr.Progress(), "job_status", stops)
    except (UserError, KeyError, ValueError) as e:
        return {"job_status": status_html(f"Not run: {e}", "error")}


def stop_it(store: AnnotationStore, ident: Identity, job_id, *, stops: StopRequests) -> dict:
    """Stops the picked job (or the only one running) before its next row; the rows done are kept."""
    try:
        require_admin(ident, "Stopping batch jobs")
    except ValueError as e:
        return {"job_status": status_html(f"Not stopped: {e}", "error")}
    running = stops.running()
    target = job_id or (running[0] if len(running) == 1 else None)
    if target not in running:
        return {"job_status": status_html("That job is not running: pick the running job in the Job list "
                                          "(Refresh jobs lists a new one) and press Stop.", "warn")}
    stops.request(target)
    return {"job_status": status_html("Stopping before the next row (the rows done are kept; Run / resume "
                                      "finishes the rest)…", "warn")}


def pick(store: AnnotationStore, ident: Identity, job_id) -> dict:
    """A job picked: the queue at its first row not annotated."""
    if not job_id:
        return show(store, None, 0, where="job_status")
    p = job_progress(store, job_id)
    start = next_unannotated(store, job_id, -1)
    start = 0 if start is None else start
    note = "" if p.processed == p.total else f"{p.total - p.processed} row(s) not processed yet: Run / resume."
    return show(store, job_id, start, note, "warn" if note else "info", "job_status", ident)


def move(store: AnnotationStore, ident: Identity, job_id, i, rating=None, corrected="", categories=(), comment="",
         spans_v=None, esa_v=None, *, where: str) -> dict:
    """◀ Previous ("prev"), Next ▶ ("next") or Next not annotated ("skip"); the row's judgement as the page holds
    it stays put when it differs from what is saved (nothing is dropped without a word)."""
    if not job_id:
        return show(store, None, 0)
    pos = queue_position(store, job_id, int(i or 0))
    changed = unsaved(store, pos.row, rating, corrected, categories, comment, spans_v, esa_v)
    if changed:
        return {"status": status_html(f"Row {pos.index + 1} has unsaved changes ({', '.join(changed)}): save them "
                                      "with Save and next, or clear them to leave the row.", "warn")}
    target = {"prev": pos.previous_index, "next": pos.next_index, "skip": pos.next_unannotated}[where]
    if target is None:
        end = {"prev": "This is the first row.", "next": "This is the last row.",
               "skip": "Every row is annotated."}[where]
        return show(store, job_id, pos.index, end, ident=ident)
    return show(store, job_id, target, ident=ident)


def unsaved(store: AnnotationStore, row: Any, rating: Any, corrected: Any, categories: Any, comment: Any,
            spans_v: Any, esa_v: Any) -> list[str]:
    """The judgement fields the page holds that differ from the row's saved annotation (or from nothing)."""
    saved = store.get(row.annotation_id) if row.annotation_id else None
    given = {"rating": parse_rating(rating), "comment": str(comment or "").strip(),
             "categories": sorted(parse_categories(categories)), "spans": list(spans_v or []),
             "ESA score": None if esa_v in (None, "") else esa_v}
    kept = {"rating": saved.rating if saved else None, "comment": saved.comment.strip() if saved else "",
            "categories": sorted(saved.error_categories) if saved else [], "spans": saved.spans if saved else [],
            "ESA score": saved.esa_score if saved else None}
    changed = [name for name in given if given[name] not in (kept[name], None, "", [])]
    text = str(corrected or "").strip()
    if text and text not in ((saved.corrected_output.strip() if saved else ""), (row.output or "").strip()):
        changed.append("corrected output")
    return changed


def save_next(store: AnnotationStore, ident: Identity, job_id, i, rating, corrected, categories, comment, annotator,
              protocol_v=None, spans_v=None, esa_v=None) -> dict:
    """Saves the row's judgement, then the queue at the next row not annotated."""
    if not job_id:
        return {"status": status_html("Pick or create a job first.", "warn")}
    try:
        require_save(ident)
        pos = queue_position(store, job_id, int(i or 0))
        fields_v = judgement(rating, corrected, categories, comment, ident.annotator(annotator),
                             protocol=protocol_v, spans=spans_v, esa_score=esa_v if protocol_v == "esa" else None)
        if not fields_v["annotator"]:
            raise ValueError("Enter your name as annotator before saving (it is remembered in this browser).")
        require_judged(fields_v, pos.row.output or "")
        annotate_row(store, job_id, pos.index, annotation_for(get_job(store, job_id), pos.row, **fields_v,
                                                              owner=ident.owner))
    except (ValueError, KeyError, IndexError) as e:
        return {"status": status_html(f"Not saved: {e}", "error")}
    after = queue_position(store, job_id, pos.index)
    target = after.next_unannotated
    if target is None:
        return show(store, job_id, pos.index, f"Saved. {after.label}: every row is annotated.", ident=ident)
    return show(store, job_id, target, f"Saved row {pos.index + 1}.", ident=ident)


def refresh_jobs(store: AnnotationStore, ident: Identity, job_id) -> dict:
    values = job_choices(store)
    ids = [v for _, v in values]
    return {"job": gr.Dropdown(choices=values, value=job_id if job_id in ids else None)}


def task_models(store: AnnotationStore, ident: Identity, task_v, *, ctx: AppContext) -> dict:
    """The task's checkpoints in the model box."""
    entry = ctx.assets.models[task_v]
    return {"picker.source": gr.Dropdown(choices=entry.suggestions or [entry.default], value=entry.default)}


# ---------------------------------------------------------------------------------------------------------------
# Layout and wiring


def build(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """Lays out the tab (call inside a `gr.Tab`) and wires its events; `name` keeps the queue's annotator box
    in step with the page's others."""
    tab = layout(ctx)
    if name is not None:
        name.remember(tab.fields.annotator)
    wire(tab, ctx, store)


def layout(ctx: AppContext) -> BatchTab:
    gr.Markdown(help_text(ctx, "batch"), elem_classes=["tab-help"])
    parts = new_job_section(ctx)
    with gr.Accordion("Import a command's output (python -m app batch … --output out.jsonl)", open=False):
        with gr.Row():
            parts["outputs_file"] = gr.File(label="The command's output (JSONL)", file_types=[".jsonl"],
                                            type="filepath", elem_id="batch-import-file", scale=3)
            parts["import_button"] = gr.Button("Import as a job", elem_id="batch-import", scale=1)
        parts["import_status"] = gr.HTML(elem_id="batch-import-status")
    with gr.Row():
        parts["job"] = gr.Dropdown([], value=None, label="Job", elem_id="batch-job", scale=4)
        parts["refresh"] = gr.Button("Refresh jobs", scale=1)
        parts["resume"] = gr.Button("Run / resume", scale=1, elem_id="batch-resume")
        parts["stop"] = gr.Button("Stop", scale=1, variant="stop", elem_id="batch-stop")
    parts["job_status"] = gr.HTML(elem_id="batch-job-status")
    return BatchTab(**parts, **queue_section(ctx))


def new_job_section(ctx: AppContext) -> dict:
    with gr.Accordion("New job", open=True):
        with gr.Row():
            upload = gr.File(label="Inputs (CSV, JSONL or Parquet)", file_types=[".csv", ".jsonl", ".parquet"],
                             type="filepath", elem_id="batch-upload")
            task = gr.Dropdown(JOB_TASKS, value=JOB_TASKS[0], label="Task", elem_id="batch-task")
        picker = model_picker(ctx, JOB_TASKS[0])
        controls = decoding_controls()
        command = gr.Markdown(elem_id="batch-command")
        create = gr.Button("Create job and run", variant="primary", elem_id="batch-create")
        create_status = gr.HTML(elem_id="batch-create-status")
    return {"upload": upload, "task": task, "picker": picker, "controls": controls, "command": command,
            "create": create, "create_status": create_status}


def queue_section(ctx: AppContext) -> dict:
    gr.Markdown("### Annotation queue")
    out = {"index": gr.State(0)}
    with gr.Row():
        out["done"] = gr.HTML(elem_id="batch-done")
    with gr.Row():
        out["row_input"] = gr.Textbox(label="Input", lines=4, interactive=False, elem_id="batch-input")
        out["row_output"] = gr.Textbox(label="Model output", lines=4, interactive=False, elem_id="batch-output")
    out["fields"] = fields("batch")
    out["editor"] = span_editor.layout(ctx, queue_frame())
    with gr.Row():
        out["prev"] = gr.Button("◀ Previous", elem_id="batch-prev")
        out["save"] = gr.Button("Save and next", variant="primary", elem_id="batch-save")
        out["next"] = gr.Button("Next ▶", elem_id="batch-next")
        out["skip"] = gr.Button("Next not annotated", elem_id="batch-next-unannotated")
    out["status"] = gr.HTML(elem_id="batch-status")
    return out


def wire(tab: BatchTab, ctx: AppContext, store: AnnotationStore) -> None:
    settings, stops, shown = ctx.settings, StopRequests(), tab.shown()

    def on(handler, progress=False, **kw):
        return bind(functools.partial(handler, **kw), tab, store, settings, progress=progress)

    span_editor.wire(tab.editor, store, settings, span_js(ctx, "span_select"))
    tab.task.change(on(task_models, ctx=ctx), tab.task, tab.picker.source, **PRIVATE)
    tab.create.click(on(create_and_run, ctx=ctx, stops=stops), [tab.upload, tab.task, *tab.settings()],
                     [*shown, tab.create_status, tab.job], concurrency_id="models", **PRIVATE)
    tab.resume.click(on(resume_it, progress=True, ctx=ctx, stops=stops), tab.job, [*shown, tab.job_status, tab.job],
                     concurrency_id="models", **PRIVATE)
    tab.import_button.click(on(import_output), tab.outputs_file, [*shown, tab.import_status, tab.job], **PRIVATE)
    gr.on([tab.upload.change, tab.task.change, *(c.change for c in tab.settings())], on(command_for, ctx=ctx),
          [tab.upload, tab.task, *tab.settings()], tab.command, **PRIVATE)
    tab.refresh.click(on(refresh_jobs), tab.job, tab.job, **PRIVATE)
    # Outside the models queue, so it runs while the job holds a worker; the job stops before its next row.
    tab.stop.click(on(stop_it, stops=stops), tab.job, tab.job_status, **PRIVATE)
    tab.job.input(on(pick), tab.job, [*shown, tab.job_status], **PRIVATE)
    for button, where in ((tab.prev, "prev"), (tab.next, "next"), (tab.skip, "skip")):
        button.click(on(move, where=where), [tab.job, tab.index, *tab.fields.judgement(), tab.editor.spans,
                                              tab.editor.esa_score], shown, **PRIVATE)
    tab.save.click(on(save_next), [tab.job, tab.index, *tab.fields.components(), tab.editor.protocol,
                                   tab.editor.spans, tab.editor.esa_score], shown,
                   **PRIVATE).then(on(refresh_jobs), tab.job, tab.job, **PRIVATE)
    root = Context.root_block
    if root is not None:
        root.load(on(refresh_jobs), tab.job, tab.job, **PRIVATE)
