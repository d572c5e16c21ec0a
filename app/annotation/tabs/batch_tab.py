"""The Batch tab: a file of inputs run through one task, then walked as an annotation queue; resumable.

Jobs and their results live in the annotation database (`app.annotation.batch`), so after a restart the job list offers
every job: running it again finishes the rows not yet processed, and the queue goes on where it stopped.
"""
from __future__ import annotations

from pathlib import Path
import gradio as gr
from gradio.context import Context

from ..api import batch_process, judgement
from ..batch import (StopRequests, annotate_row, annotation_for, create_job, get_job, import_outputs, job_progress,
                     job_settings, list_jobs, load_inputs, next_unannotated, queue_position, run_batch)
from ...cli import LARGE_FILE_ROWS, command_lines
from ...context import AppContext
from ...errors import UserError
from ..store import AnnotationStore
from ...tasks import Decoding, is_rtl
from .identity import AnnotatorName
from . import span_editor
from .panel import fields
from .annotations import help_text
from ...tabs.common import decoding_controls, model_picker, progress_reporter, status_html
from ...tasklist import TASKS
from ..rights import OPEN, Identity, identify, require_admin, require_save


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


def build(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """Lays out the tab (call inside a `gr.Tab`) and wires its events; `name` keeps the queue's annotator box
    in step with the page's others. Each message shows under the buttons that caused it: the new job's, the
    job row's, the queue's."""
    gr.Markdown(help_text(ctx, "batch"), elem_classes=["tab-help"])
    with gr.Accordion("New job", open=True):
        with gr.Row():
            upload = gr.File(label="Inputs (CSV, JSONL or Parquet)", file_types=[".csv", ".jsonl", ".parquet"],
                             type="filepath", elem_id="batch-upload")
            task = gr.Dropdown(list(TASKS), value=next(iter(TASKS)), label="Task", elem_id="batch-task")
        picker = model_picker(ctx, next(iter(TASKS)))
        controls = decoding_controls()
        command = gr.Markdown(elem_id="batch-command")   # the batch command, for a large file
        create = gr.Button("Create job and run", variant="primary", elem_id="batch-create")
        create_status = gr.HTML(elem_id="batch-create-status")
    with gr.Accordion("Import a command's output (python -m app batch … --output out.jsonl)", open=False):
        with gr.Row():
            outputs_file = gr.File(label="The command's output (JSONL)", file_types=[".jsonl"], type="filepath",
                                   elem_id="batch-import-file", scale=3)
            import_button = gr.Button("Import as a job", elem_id="batch-import", scale=1)
        import_status = gr.HTML(elem_id="batch-import-status")
    with gr.Row():
        job = gr.Dropdown([], value=None, label="Job", elem_id="batch-job", scale=4)
        refresh = gr.Button("Refresh jobs", scale=1)
        resume = gr.Button("Run / resume", scale=1, elem_id="batch-resume")
        stop = gr.Button("Stop", scale=1, variant="stop", elem_id="batch-stop")
    job_status = gr.HTML(elem_id="batch-job-status")
    stops = StopRequests()

    gr.Markdown("### Annotation queue")
    index = gr.State(0)
    with gr.Row():
        done = gr.HTML(elem_id="batch-done")
    with gr.Row():
        row_input = gr.Textbox(label="Input", lines=4, interactive=False, elem_id="batch-input")
        row_output = gr.Textbox(label="Model output", lines=4, interactive=False, elem_id="batch-output")
    f = fields("batch")
    # the row's error spans, highlighted and editable (ESA / MQM, as in the panel under each result)
    spans_ed = span_editor.build(ctx, store, "batch-queue", {"output": "Output: select a stretch to mark an error",
                                                             "input": "Input: select what the output leaves out"},
                                 with_esa=True)
    if name is not None:
        name.remember(f.annotator)
    with gr.Row():
        prev = gr.Button("◀ Previous", elem_id="batch-prev")
        save = gr.Button("Save and next", variant="primary", elem_id="batch-save")
        nxt = gr.Button("Next ▶", elem_id="batch-next")
        skip = gr.Button("Next not annotated", elem_id="batch-next-unannotated")
    status = gr.HTML(elem_id="batch-status")   # the queue's messages

    def who(request: gr.Request | None) -> Identity:
        return identify(request, ctx.settings)

    def show(job_id: str | None, i: int | None, note: str = "", kind: str = "info", where: gr.HTML = status,
             ident: Identity = OPEN) -> dict:
        """Everything the queue shows at row `i` of the job: input, output, an earlier judgement (one `ident` may
        see) or a fresh one; `note` goes to the status line `where` (the one under the button pressed)."""
        if not job_id:
            return {done: status_html("Pick or create a job."), where: status_html(note, kind)}
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
            judged = f.fill(earlier.rating, earlier.corrected_output, earlier.error_categories, earlier.comment)
        else:
            judged = f.fill(corrected=output)
        text = row.input_text
        line = f"{pos.label} · {pos.position_label}" + (" · annotated" if row.annotated else "")
        marked = spans_ed.load({"output": output, "input": text}, get_job(store, job_id).task,
                               earlier.spans if earlier is not None else [],
                               (earlier.protocol or "none") if earlier is not None else spans_ed.protocols.default,
                               earlier.esa_score if earlier is not None else None)
        return {**marked, index: pos.index, done: status_html(line),
                row_input: gr.Textbox(value=text, rtl=is_rtl(text)),
                row_output: gr.Textbox(value=output, rtl=is_rtl(output), placeholder=output_note), **judged,
                where: status_html(note or output_note, kind if note else ("warn" if output_note else "info"))}

    shown = [index, done, row_input, row_output, *f.judgement(), status, *spans_ed.load_outputs()]

    def run(job_id: str, progress: gr.Progress, where: gr.HTML) -> dict:
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
        return {**show(job_id, 0, note, "warn" if result.failed else "info", where),
                job: gr.Dropdown(choices=job_choices(store), value=job_id)}

    # `request` before `*settings`: Gradio injects only positional parameters
    def create_and_run(path, task_v, source, dtype, device, quant, request: gr.Request, *settings,
                       progress=gr.Progress()):
        if not path:
            return {create_status: status_html("Upload a CSV or JSONL file of inputs first.", "warn")}
        try:
            require_admin(who(request), "Creating batch jobs")
            inputs = load_inputs(path, max_rows=ctx.settings.batch_rows)
            spec = TASKS[task_v]
            if any(spec.missing(vars(x)) for x in inputs):
                columns = " and ".join(f"`{name}`" for name in spec.fields)
                many = len(spec.fields) > 1
                raise ValueError(f"{task_v} needs {'' if many else 'a '}{columns} column{'s' if many else ''} "
                                 "on every row")
            decoding = controls.decoding(list(settings))
            loaded = ctx.load(task_v, source, dtype, device, quant, progress_reporter(progress))
            new = create_job(store, inputs, task=task_v, settings=job_settings(loaded, decoding),
                             source=Path(path).name)
        except (ValueError, UserError) as e:
            return {create_status: status_html(f"No job created: {e}", "error")}
        try:
            return run(new.id, progress, create_status)
        except UserError as e:
            return {create_status: status_html(f"Job created but not run: {e}", "error")}

    def command_for(path, task_v, source, dtype, device, quant, *settings):
        return {command: batch_command(ctx, path, task_v, source, dtype, quant, controls.decoding(list(settings)))}

    def import_output(path, request: gr.Request = None):
        """A job from the batch command's output file, its rows processed: the queue opens at its first row."""
        if not path:
            return {import_status: status_html("Upload the .jsonl file the batch command wrote first.", "warn")}
        ident = who(request)
        try:
            require_admin(ident, "Importing batch outputs")
            new = import_outputs(store, path)
        except (ValueError, OSError) as e:
            return {import_status: status_html(f"Nothing imported: {e}", "error")}
        p = job_progress(store, new.id)
        note = f"Imported {new.total} row(s) as the job {new.name!r} ({p.processed} with an output)."
        return {**show(new.id, 0, note, where=import_status, ident=ident),
                job: gr.Dropdown(choices=job_choices(store), value=new.id)}

    def resume_it(job_id, request: gr.Request = None, progress=gr.Progress()):
        if not job_id:
            return {job_status: status_html("Pick a job to run or resume.", "warn")}
        try:
            require_admin(who(request), "Running batch jobs")
            return run(job_id, progress, job_status)
        except (UserError, KeyError, ValueError) as e:
            return {job_status: status_html(f"Not run: {e}", "error")}

    def stop_it(job_id, request: gr.Request = None):
        """Stops the picked job (or the only one running) before its next row; the rows done are kept."""
        try:
            require_admin(who(request), "Stopping batch jobs")
        except ValueError as e:
            return {job_status: status_html(f"Not stopped: {e}", "error")}
        running = stops.running()
        target = job_id or (running[0] if len(running) == 1 else None)
        if target not in running:
            return {job_status: status_html("That job is not running: pick the running job in the Job list "
                                            "(Refresh jobs lists a new one) and press Stop.", "warn")}
        stops.request(target)
        return {job_status: status_html("Stopping before the next row (the rows done are kept; Run / resume "
                                        "finishes the rest)…", "warn")}

    def pick(job_id, request: gr.Request = None):
        if not job_id:
            return show(None, 0, where=job_status)
        p = job_progress(store, job_id)
        start = next_unannotated(store, job_id, -1)
        start = 0 if start is None else start
        note = "" if p.processed == p.total else f"{p.total - p.processed} row(s) not processed yet: Run / resume."
        return show(job_id, start, note, "warn" if note else "info", job_status, who(request))

    def move(job_id, i, where, ident: Identity = OPEN):
        if not job_id:
            return show(None, 0)
        pos = queue_position(store, job_id, int(i or 0))
        target = {"prev": pos.previous_index, "next": pos.next_index, "skip": pos.next_unannotated}[where]
        if target is None:
            end = {"prev": "This is the first row.", "next": "This is the last row.",
                   "skip": "Every row is annotated."}[where]
            return show(job_id, pos.index, end, ident=ident)
        return show(job_id, target, ident=ident)

    def move_prev(job_id, i, request: gr.Request = None):
        return move(job_id, i, "prev", who(request))

    def move_next(job_id, i, request: gr.Request = None):
        return move(job_id, i, "next", who(request))

    def move_skip(job_id, i, request: gr.Request = None):
        return move(job_id, i, "skip", who(request))

    def save_next(job_id, i, rating, corrected, categories, comment, annotator, protocol_v=None, spans_v=None,
                  esa_v=None, request: gr.Request = None):
        if not job_id:
            return {status: status_html("Pick or create a job first.", "warn")}
        ident = who(request)
        try:
            require_save(ident)
            pos = queue_position(store, job_id, int(i or 0))
            fields_v = judgement(rating, corrected, categories, comment, ident.annotator(annotator),
                                 protocol=protocol_v, spans=spans_v, esa_score=esa_v if protocol_v == "esa" else None)
            if not fields_v["annotator"]:
                raise ValueError("Enter your name as annotator before saving (it is remembered in this browser).")
            annotate_row(store, job_id, pos.index, annotation_for(get_job(store, job_id), pos.row, **fields_v,
                                                                  owner=ident.owner))
        except (ValueError, KeyError, IndexError) as e:
            return {status: status_html(f"Not saved: {e}", "error")}
        after = queue_position(store, job_id, pos.index)
        target = after.next_unannotated
        if target is None:
            return show(job_id, pos.index, f"Saved. {after.label}: every row is annotated.", ident=ident)
        return show(job_id, target, f"Saved row {pos.index + 1}.", ident=ident)

    def refresh_jobs(job_id):
        values = job_choices(store)
        ids = [v for _, v in values]
        return {job: gr.Dropdown(choices=values, value=job_id if job_id in ids else None)}

    def task_models(task_v):
        entry = ctx.assets.models[task_v]
        return {picker.source: gr.Dropdown(choices=entry.suggestions or [entry.default], value=entry.default)}

    priv = {"api_visibility": "private"}
    task.change(task_models, task, picker.source, **priv)
    create.click(create_and_run, [upload, task, *picker.components(), *controls.inputs()],
                 [*shown, create_status, job], concurrency_id="models", **priv)
    resume.click(resume_it, job, [*shown, job_status, job], concurrency_id="models", **priv)
    import_button.click(import_output, outputs_file, [*shown, import_status, job], **priv)
    gr.on([upload.change, task.change, *(c.change for c in [*picker.components(), *controls.inputs()])], command_for,
          [upload, task, *picker.components(), *controls.inputs()], command, **priv)
    refresh.click(refresh_jobs, job, job, **priv)
    # Outside the models queue, so it runs while the job holds a worker; the job stops before its next row.
    stop.click(stop_it, job, job_status, **priv)
    job.input(pick, job, [*shown, job_status], **priv)
    prev.click(move_prev, [job, index], shown, **priv)
    nxt.click(move_next, [job, index], shown, **priv)
    skip.click(move_skip, [job, index], shown, **priv)
    save.click(save_next, [job, index, *f.components(), spans_ed.protocol, spans_ed.spans, spans_ed.esa_score], shown,
               **priv).then(refresh_jobs, job, job, **priv)
    root = Context.root_block
    if root is not None:
        root.load(refresh_jobs, job, job, **priv)
