"""The Compare tab: one input through two systems, the outputs shown blind as A and B, a preference with error spans
on both sides; the Batch tab's compare jobs; and the /compare, /export_comparisons, /import_comparisons endpoints.

The work is plain functions (`check_pair`, `run_pair`, `save_pair`, `compare`); the handlers only lay out what
they return. Which system is A lives in a server-side `gr.State`, never in the page, until the judgement is saved.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.context import Context
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder, is_in_or_equal

from ... import __version__
from ...context import AppContext
from ...errors import UserError
from ...files import FilesFull
from ...models import ModelRequest
from ...tabs.common import DecodingControls, ModelPicker, decoding_controls, model_picker, progress_reporter, \
    status_html
from ...tasklist import TASKS
from ...tasks import Decoding
from ..agreement import system_label
from ..api import batch_process, decoding_dict, input_as_text, parse_decoding, serve_visitor_files, span_fields
from ..batch import StopRequests, load_inputs
from ..comparisons import (PREFERENCE_LABELS, PREFERENCES, Comparison, System, compare_rows, comparison_for_row,
                           comparison_owner, create_compare_job, delete_comparison, export_comparisons,
                           get_comparison, get_compare_job, identical_message, import_comparisons, judge_row,
                           list_compare_jobs, query_comparisons, run_compare_job, same_system, save_comparison,
                           system_from_settings)
from ..rights import Identity, identify, require_admin, require_owner_or_admin, require_save, visible_owner
from ..store import AnnotationStore
from . import batch_tab
from .batch_tab import job_settings
from .identity import AnnotatorName
from . import span_editor

TITLES = {"A": "Output A", "B": "Output B", "input": "Input: select what an output leaves out (omissions)"}
QA_FIELDS = ("question", "context")


# ---------------------------------------------------------------------------------------------------------------
# The work


@dataclass
class Pair:
    """Two systems' outputs for one input. `flipped`: system 2 is shown as A. Kept server-side until saved."""
    task: str
    inputs: dict[str, str]
    systems: tuple[dict[str, Any], dict[str, Any]]     # job_settings of system 1 and 2
    outputs: tuple[str, str]
    flipped: bool
    saved_id: str = ""

    @property
    def input_text(self) -> str:
        return input_as_text(self.inputs)

    def shown(self) -> dict[str, str]:
        a, b = (self.outputs[1], self.outputs[0]) if self.flipped else self.outputs
        return {"A": a, "B": b, "input": self.input_text}

    def system_on(self, side: str) -> int:
        """1 or 2: the system shown on `side`."""
        return (2 if self.flipped else 1) if side == "A" else (1 if self.flipped else 2)


def check_pair(task: str, req1: ModelRequest, dec1: Decoding, req2: ModelRequest, dec2: Decoding) -> None:
    """UserError when the two systems are the same (nothing is run): same checkpoint, revision, dtype and
    quantization, and, for a task that decodes, the same decoding settings. The device does not count."""
    one, two = (dataclasses.replace(r, device="auto") for r in (req1, req2))
    if one == two and (not TASKS[task].decodes or decoding_dict(dec1) == decoding_dict(dec2)):
        raise UserError(identical_message(System(req1.source)))


def run_pair(ctx: AppContext, task: str, inputs: dict[str, str], pickers: tuple[tuple, tuple],
             decodings: tuple[Decoding, Decoding], rng: random.Random | None = None, progress=None) -> Pair:
    """Runs `inputs` through both systems (pickers: (source, dtype, device, quantization) each) and draws the
    order shown. UserError, with nothing run, for identical systems or a missing input."""
    spec = TASKS[task]
    missing = spec.missing(inputs)
    if missing:
        raise UserError(f"The {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} empty: type the input "
                        "both systems should get.")
    requests = [ctx.request(task, *p) for p in pickers]
    check_pair(task, requests[0], decodings[0], requests[1], decodings[1])
    loaded = [ctx.load(task, *p, progress=progress) for p in pickers]
    systems = []
    for model, decoding in zip(loaded, decodings):
        s = job_settings(model, decoding)
        if not spec.decodes:
            s["decoding"] = {}      # the task does not decode: the settings played no part
        systems.append(s)
    if same_system(system_from_settings(systems[0]), system_from_settings(systems[1]), spec.decodes):
        raise UserError(identical_message(system_from_settings(systems[0])))
    outputs = tuple(batch_process(task, model, decoding)(_Row(inputs)) for model, decoding in zip(loaded, decodings))
    rng = rng or random.Random()
    return Pair(task, dict(inputs), (systems[0], systems[1]), outputs, rng.random() < 0.5)


@dataclass(frozen=True)
class _Row:
    """What `batch_process` reads of a row."""
    inputs: dict[str, str]


def pair_comparison(pair: Pair, preference: str, annotator: str, protocol: Any, spans: Any, comment: str) -> Comparison:
    sides = {side: system_from_settings(pair.systems[pair.system_on(side) - 1]) for side in ("A", "B")}
    shown = pair.shown()
    fields = span_fields(protocol, spans, None)
    return Comparison(task=pair.task, input=shown["input"], system_a=sides["A"], output_a=shown["A"],
                      system_b=sides["B"], output_b=shown["B"], preference=str(preference or ""),
                      annotator=str(annotator or "").strip(), protocol=fields["protocol"], spans=fields["spans"],
                      comment=str(comment or ""), app_version=str(pair.systems[0].get("app_version") or __version__))


def reveal(pair_systems: tuple, system_on: dict[str, int], task: str) -> str:
    """"A was system 2: mt5-small (num_beams=4) · B was system 1: …": each named by what sets it apart."""
    systems = [system_from_settings(s) for s in pair_systems]
    return " · ".join(f"{side} was system {n}: {system_label(systems[n - 1], systems[2 - n])}"
                      for side, n in system_on.items())


# ---------------------------------------------------------------------------------------------------------------
# Layout pieces shared by the tab and the Batch tab's compare jobs


@dataclass
class SystemColumn:
    picker: ModelPicker
    controls: DecodingControls


def system_columns(ctx: AppContext, prefix: str, task: str) -> tuple[SystemColumn, SystemColumn]:
    out = []
    with gr.Row(equal_height=False):
        for n in (1, 2):
            with gr.Column(elem_id=f"{prefix}-system-{n}", elem_classes=["compare-system"]):
                gr.Markdown(f"**System {n}**")
                out.append(SystemColumn(model_picker(ctx, task), decoding_controls()))
    return out[0], out[1]


@dataclass
class JudgeFields:
    editor: span_editor.SpanEditor
    preference: gr.Radio
    comment: gr.Textbox
    annotator: gr.Textbox

    def clear(self) -> dict:
        return {self.preference: None, self.comment: ""}


def judge_fields(ctx: AppContext, store: AnnotationStore, prefix: str, name: AnnotatorName | None) -> JudgeFields:
    editor = span_editor.build(ctx, store, prefix, TITLES, row=("A", "B"))
    with gr.Row():
        preference = gr.Radio([(PREFERENCE_LABELS[p], p) for p in PREFERENCES], value=None, label="Preference",
                              elem_id=f"{prefix}-preference", scale=3)
        annotator = gr.Textbox(label="Annotator", placeholder="your name (remembered in this browser)",
                               max_length=200, elem_id=f"{prefix}-annotator", scale=1)
    comment = gr.Textbox(lines=2, label="Comment (optional)", elem_id=f"{prefix}-comment")
    if name is not None:
        name.remember(annotator)
    return JudgeFields(editor, preference, comment, annotator)


def saved_message(c: Comparison, cmp_id: str, revealed: str) -> str:
    return f"Saved comparison {cmp_id[:8]} ({PREFERENCE_LABELS[c.preference]}, {len(c.spans)} span(s)). {revealed}"


# ---------------------------------------------------------------------------------------------------------------
# The Compare tab


def build(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """Lays out the Compare tab (inside a `gr.Tab`) and wires it."""
    gr.Markdown(ctx.assets.help.get("compare", ""), elem_classes=["tab-help"])
    first = next(iter(TASKS))
    task = gr.Dropdown([(t.title, t.name) for t in TASKS.values()], value=first, label="Task",
                       elem_id="compare-task")
    question = gr.Textbox(label="Question", visible=TASKS[first].fields == QA_FIELDS, elem_id="compare-question")
    text = gr.Textbox(lines=4, label="Input (the same for both systems)", elem_id="compare-input")
    one, two = system_columns(ctx, "compare", first)
    run = gr.Button("Run both systems (shown blind as A and B)", variant="primary", elem_id="compare-run")
    run_status = gr.HTML(elem_id="compare-run-status")
    j = judge_fields(ctx, store, "compare", name)
    save = gr.Button("Save preference and reveal the systems", variant="primary", elem_id="compare-save")
    status = gr.HTML(elem_id="compare-status")
    pair = gr.State(None)        # the Pair as a dict: server-side, so the page never knows which system is A

    pickers = [*one.picker.components(), *two.picker.components()]
    settings = [*one.controls.inputs(), *two.controls.inputs()]
    n1, n2 = len(one.controls.inputs()), len(two.controls.inputs())

    def compare_run(task_v, question_v, text_v, *values, progress=gr.Progress()):
        p1, p2, rest = values[:4], values[4:8], values[8:]
        inputs = {"question": question_v or "", "context": text_v or ""} if TASKS[task_v].fields == QA_FIELDS \
            else {"text": text_v or ""}
        try:
            decodings = (one.controls.decoding(list(rest[:n1])), two.controls.decoding(list(rest[n1:n1 + n2])))
            result = run_pair(ctx, task_v, inputs, (p1, p2), decodings, progress=progress_reporter(progress))
        except (UserError, ValueError) as e:
            return {run_status: status_html(f"Nothing run: {e}", "error"), pair: None,
                    **j.editor.load({}, task_v, [], j.editor.protocols.default), **j.clear()}
        return {pair: dataclasses.asdict(result), status: "", **j.clear(),
                run_status: status_html("Both systems ran. Which one is A was drawn at random: judge, then save to "
                                        "see it."),
                **j.editor.load(result.shown(), task_v, [], j.editor.protocols.default)}

    def compare_save(pair_v, preference_v, annotator_v, comment_v, protocol_v, spans_v, request: gr.Request):
        if not pair_v:
            return {status: status_html("Run both systems first, then judge and save.", "warn")}
        p = Pair(**{**pair_v, "systems": tuple(pair_v["systems"]), "outputs": tuple(pair_v["outputs"])})
        if p.saved_id:
            return {status: status_html(f"This pair is saved already ({p.saved_id[:8]}): run again for a new one.",
                                        "warn")}
        try:
            ident = identify(request, ctx.settings)
            require_save(ident)
            c = pair_comparison(p, preference_v, ident.annotator(annotator_v), protocol_v, spans_v, comment_v)
            if not c.preference:
                raise ValueError("choose a preference: A is better, B is better, tie or both bad")
            cmp_id = save_comparison(store, c, owner=ident.owner)
        except ValueError as e:
            return {status: status_html(f"Not saved: {e}", "error")}
        revealed = reveal(p.systems, {"A": p.system_on("A"), "B": p.system_on("B")}, p.task)
        return {status: status_html(saved_message(c, cmp_id, revealed)), pair: {**pair_v, "saved_id": cmp_id}}

    def compare_task_changed(task_v):
        entry = ctx.assets.models[task_v]
        source = gr.Dropdown(choices=entry.suggestions or [entry.default], value=entry.default)
        return {question: gr.Textbox(visible=TASKS[task_v].fields == QA_FIELDS),
                text: gr.Textbox(label="Context (the same for both systems)" if TASKS[task_v].fields == QA_FIELDS
                                 else "Input (the same for both systems)"),
                one.picker.source: source, two.picker.source: source}

    priv = {"api_visibility": "private"}
    task.input(compare_task_changed, task, [question, text, one.picker.source, two.picker.source], **priv)
    run.click(compare_run, [task, question, text, *pickers, *settings],
              [pair, status, run_status, j.preference, j.comment, *j.editor.load_outputs()],
              concurrency_id="models", **priv)
    save.click(compare_save, [pair, j.preference, j.annotator, j.comment, j.editor.protocol, j.editor.spans],
               [status, pair], **priv)


# ---------------------------------------------------------------------------------------------------------------
# The Batch tab's compare jobs


def job_choices(store: AnnotationStore) -> list[tuple[str, str]]:
    out = []
    for job in list_compare_jobs(store):
        rows = compare_rows(store, job.id)
        judged = sum(r.comparison_id is not None for r in rows)
        out.append((f"{job.name} · {job.task} · {judged} of {job.total} judged · {job.created_at[:16]}", job.id))
    return out


def build_batch_tab(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """The Batch tab: its one-system jobs (batch_tab), then compare jobs."""
    batch_tab.build(ctx, store, name)
    build_batch(ctx, store, name)


def build_batch(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """The Batch tab's compare section: a file through two systems, then a blind A/B queue."""
    first = next(iter(TASKS))
    with gr.Accordion("Compare job: every row through two systems, then judged blind as A and B", open=False,
                      elem_id="batch-compare"):
        with gr.Row():
            upload = gr.File(label="Inputs (CSV or JSONL)", file_types=[".csv", ".jsonl"], type="filepath",
                             elem_id="batch-compare-upload")
            task = gr.Dropdown([(t.title, t.name) for t in TASKS.values()], value=first, label="Task",
                               elem_id="batch-compare-task")
        one, two = system_columns(ctx, "batch-compare", first)
        create = gr.Button("Create compare job and run", variant="primary", elem_id="batch-compare-create")
        create_status = gr.HTML(elem_id="batch-compare-create-status")
        with gr.Row():
            job = gr.Dropdown([], value=None, label="Compare job", scale=4, elem_id="batch-compare-job")
            resume = gr.Button("Run / resume", scale=1, elem_id="batch-compare-resume")
            stop = gr.Button("Stop", scale=1, variant="stop", elem_id="batch-compare-stop")
        job_status = gr.HTML(elem_id="batch-compare-job-status")
        index = gr.State(0)
        where = gr.HTML(elem_id="batch-compare-where")
        j = judge_fields(ctx, store, "batch-compare", name)
        with gr.Row():
            prev = gr.Button("◀ Previous", elem_id="batch-compare-prev")
            save = gr.Button("Save and next", variant="primary", elem_id="batch-compare-save")
            nxt = gr.Button("Next ▶", elem_id="batch-compare-next")
        status = gr.HTML(elem_id="batch-compare-status")

    pickers = [*one.picker.components(), *two.picker.components()]
    settings = [*one.controls.inputs(), *two.controls.inputs()]
    n1 = len(one.controls.inputs())

    def cjob_show(job_id, i, note="", kind="info", ident: Identity | None = None):
        """The queue at row `i`: A and B as drawn for the row, an earlier judgement `ident` may see, or none."""
        if not job_id:
            return {where: status_html("Pick or create a compare job."), status: status_html(note, kind)}
        jb = get_compare_job(store, job_id)
        rows = compare_rows(store, job_id)
        i = min(max(0, int(i or 0)), len(rows) - 1)
        row = rows[i]
        judged = sum(r.comparison_id is not None for r in rows)
        earlier = get_comparison(store, row.comparison_id) if row.comparison_id else None
        if earlier is not None and ident is not None and not ident.sees_all and earlier.owner != ident.user:
            earlier = None   # someone else's judgement: not shown to another annotator
        a, b = row.shown()
        texts = {"A": a, "B": b, "input": input_as_text(row.inputs) if row.question else row.text}
        line = f"{judged} of {jb.total} judged · item {i + 1} of {jb.total}" + (" · judged" if earlier else "") + \
            ("" if row.processed else f" · not processed yet{': ' + row.error if row.error else ''} (Run / resume)")
        spans = earlier.spans if earlier else []
        return {index: i, where: status_html(line, "info" if row.processed else "warn"),
                **j.editor.load(texts, jb.task, spans, earlier.protocol if earlier else j.editor.protocols.default),
                j.preference: earlier.preference if earlier else None, j.comment: earlier.comment if earlier else "",
                status: status_html(note, kind) if note else ""}

    shown = [index, where, *j.editor.load_outputs(), j.preference, j.comment, status]
    stops = StopRequests()      # the Stop button's requests to running compare jobs

    def cjob_run(job_id, progress, out_status):
        jb = get_compare_job(store, job_id)
        models = []
        for s in jb.systems:
            req = s.get("request", {})
            models.append((ctx.load(jb.task, req.get("source") or s.get("model_id"), req.get("dtype", "auto"),
                                    req.get("device", "auto"), req.get("quantization", "none"),
                                    progress_reporter(progress)), Decoding(**(s.get("decoding") or {}))))
        processes = [batch_process(jb.task, m, d) for m, d in models]
        asked = stops.start(job_id)
        try:
            done, failed = run_compare_job(store, job_id, lambda n, row: processes[n - 1](row),
                                           progress=lambda k, total: progress((k, total), desc=f"{k} of {total} rows"),
                                           should_stop=asked)
            stopped = asked()
        finally:
            stops.finish(job_id)
        note = f"Processed {done} row(s) with both systems" + (f"; {failed} failed (run again to retry)" if failed
                                                               else "") + "."
        if stopped:
            note = f"Stopped on request: {note} Run / resume finishes the rest."
        return {**cjob_show(job_id, 0), out_status: status_html(note, "warn" if failed else "info"),
                job: gr.Dropdown(choices=job_choices(store), value=job_id)}

    def cjob_create_and_run(path, task_v, request: gr.Request, *values, progress=gr.Progress()):
        if not path:
            return {create_status: status_html("Upload a CSV or JSONL file of inputs first.", "warn")}
        p1, p2, rest = values[:4], values[4:8], values[8:]
        try:
            ident = identify(request, ctx.settings)
            require_admin(ident, "Creating compare jobs")
            inputs = load_inputs(path, max_rows=ctx.settings.batch_rows)
            spec = TASKS[task_v]
            if any(spec.missing(vars(x)) for x in inputs):
                raise ValueError(f"{task_v} needs {' and '.join(spec.fields)} on every row")
            decodings = (one.controls.decoding(list(rest[:n1])), two.controls.decoding(list(rest[n1:])))
            requests = [ctx.request(task_v, *p) for p in (p1, p2)]
            check_pair(task_v, requests[0], decodings[0], requests[1], decodings[1])
            loaded = [ctx.load(task_v, *p, progress=progress_reporter(progress)) for p in (p1, p2)]
            systems = [job_settings(m, d) for m, d in zip(loaded, decodings)]
            new = create_compare_job(store, inputs, task=task_v, systems=systems, source=Path(path).name,
                                     owner=ident.owner)
        except (ValueError, UserError) as e:
            return {create_status: status_html(f"No compare job created: {e}", "error")}
        return cjob_run(new.id, progress, create_status)

    def cjob_resume(job_id, request: gr.Request = None, progress=gr.Progress()):
        if not job_id:
            return {job_status: status_html("Pick a compare job to run or resume.", "warn")}
        try:
            require_admin(identify(request, ctx.settings), "Running compare jobs")
            return cjob_run(job_id, progress, job_status)
        except (UserError, KeyError, ValueError) as e:
            return {job_status: status_html(f"Not run: {e}", "error")}

    def cjob_save_next(job_id, i, preference_v, annotator_v, comment_v, protocol_v, spans_v, request: gr.Request):
        if not job_id:
            return {status: status_html("Pick or create a compare job first.", "warn")}
        try:
            ident = identify(request, ctx.settings)
            require_save(ident)
            jb = get_compare_job(store, job_id)
            row = compare_rows(store, job_id)[int(i or 0)]
            if not preference_v:
                raise ValueError("choose a preference: A is better, B is better, tie or both bad")
            fields = span_fields(protocol_v, spans_v, None)
            c = comparison_for_row(jb, row, preference=preference_v, annotator=ident.annotator(annotator_v),
                                   protocol=fields["protocol"], spans=fields["spans"], comment=str(comment_v or ""))
            cmp_id = judge_row(store, job_id, row.index, c, owner=ident.owner)
        except (ValueError, KeyError, IndexError) as e:
            return {status: status_html(f"Not saved: {e}", "error")}
        revealed = reveal(jb.systems, {"A": 2 if row.flipped else 1, "B": 1 if row.flipped else 2}, jb.task)
        rows = compare_rows(store, job_id)
        nxt_i = next((r.index for r in rows[row.index + 1:] + rows[:row.index] if r.comparison_id is None), row.index)
        return cjob_show(job_id, nxt_i, saved_message(c, cmp_id, revealed), ident=ident)

    def cjob_pick(job_id, request: gr.Request = None):
        if not job_id:
            return cjob_show(None, 0)
        rows = compare_rows(store, job_id)
        return cjob_show(job_id, next((r.index for r in rows if r.comparison_id is None), 0),
                         ident=identify(request, ctx.settings))

    def cjob_move(job_id, i, step, request: gr.Request = None):
        return cjob_show(job_id, max(0, int(i or 0) + step), ident=identify(request, ctx.settings))

    def cjob_prev(job_id, i, request: gr.Request = None):
        return cjob_move(job_id, i, -1, request)

    def cjob_next(job_id, i, request: gr.Request = None):
        return cjob_move(job_id, i, 1, request)

    def cjob_refresh(job_id):
        values = job_choices(store)
        return {job: gr.Dropdown(choices=values, value=job_id if job_id in [v for _, v in values] else None)}

    def cjob_stop(job_id, request: gr.Request = None):
        """Stops the picked compare job before its next row (the rows done are kept)."""
        try:
            require_admin(identify(request, ctx.settings), "Stopping compare jobs")
        except ValueError as e:
            return {job_status: status_html(f"Not stopped: {e}", "error")}
        if not job_id or not stops.request(job_id):
            return {job_status: status_html("That compare job is not running: pick the running one and press "
                                            "Stop.", "warn")}
        return {job_status: status_html("Stopping before the next row (the rows done are kept; Run / resume "
                                        "finishes the rest)…", "warn")}

    priv = {"api_visibility": "private"}
    # outside the models queue: it runs while the job holds a worker
    stop.click(cjob_stop, job, job_status, **priv)
    create.click(cjob_create_and_run, [upload, task, *pickers, *settings], [*shown, create_status, job],
                 concurrency_id="models", **priv)
    resume.click(cjob_resume, job, [*shown, job_status, job], concurrency_id="models", **priv)
    job.input(cjob_pick, job, shown, **priv)
    prev.click(cjob_prev, [job, index], shown, **priv)
    nxt.click(cjob_next, [job, index], shown, **priv)
    save.click(cjob_save_next, [job, index, j.preference, j.annotator, j.comment, j.editor.protocol, j.editor.spans],
               shown, **priv).then(cjob_refresh, job, job, **priv)
    task.input(lambda t: {s: gr.Dropdown(choices=ctx.assets.models[t].suggestions or [ctx.assets.models[t].default],
                                         value=ctx.assets.models[t].default)
                          for s in (one.picker.source, two.picker.source)}, task,
               [one.picker.source, two.picker.source], **priv)
    root = Context.root_block
    if root is not None:
        root.load(cjob_refresh, job, job, **priv)


# ---------------------------------------------------------------------------------------------------------------
# The API


def compare(store: AnnotationStore, task: str, input_text: str, model_a: str, output_a: str, model_b: str,
            output_b: str, preference: str, annotator: str, decoding_a: Any = None, decoding_b: Any = None,
            revision_a: str = "", revision_b: str = "", dtype_a: str = "", dtype_b: str = "", family_a: str = "mt5",
            family_b: str = "mt5", protocol: str = "esa", spans: Any = None, comment: str = "",
            app_version: str = __version__, owner: str = "") -> dict[str, Any]:
    """Save one judged comparison given as text (A and B as they were shown). Returns {"id", "item_key",
    "message", "preference", "winner" ("A"/"B" model id, or null for tie / both bad), "protocol", "spans" (as
    stored: sorted)}. ValueError saying what was wrong when nothing was saved."""
    fields = span_fields(protocol, spans, None)
    def system(model, revision, family, dtype, decoding) -> System:
        return System(str(model or ""), str(revision or ""), str(family or "mt5"), str(dtype or ""),
                      parse_decoding(decoding))
    c = Comparison(task=str(task or ""), input=str(input_text or ""),
                   system_a=system(model_a, revision_a, family_a, dtype_a, decoding_a), output_a=str(output_a or ""),
                   system_b=system(model_b, revision_b, family_b, dtype_b, decoding_b), output_b=str(output_b or ""),
                   preference=str(preference or ""), annotator=str(annotator or ""), protocol=fields["protocol"],
                   spans=fields["spans"], comment=str(comment or ""), app_version=str(app_version or ""))
    cmp_id = save_comparison(store, c, owner=owner)
    saved = get_comparison(store, cmp_id)
    winner = saved.winner()
    return {"id": saved.id, "item_key": saved.item_key, "message": f"Saved comparison {saved.id}.",
            "preference": saved.preference, "winner": winner.model_id if winner else None,
            "protocol": saved.protocol, "spans": saved.spans}


def delete_as(store: AnnotationStore, ident: Identity, cmp_id: str) -> bool:
    """Soft-delete a comparison for `ident`: its owner or an admin (anyone in open use). False if there was none."""
    owner = comparison_owner(store, cmp_id)
    if owner is None:
        return False
    require_owner_or_admin(ident, owner, "delete")
    return delete_comparison(store, cmp_id, by=ident.user)


def endpoints(store: AnnotationStore, settings: Any) -> dict[str, Any]:
    """/compare, /export_comparisons and /import_comparisons bound to `store`, with the rights of
    app.annotation.rights (`settings`: the deployment's); refusals raise gradio.Error."""

    def compare_endpoint(task: str, input_text: str, model_a: str, output_a: str, model_b: str, output_b: str,
                         preference: str, annotator: str, decoding_a: str = "", decoding_b: str = "",
                         revision_a: str = "", revision_b: str = "", dtype_a: str = "", dtype_b: str = "",
                         family_a: str = "mt5", family_b: str = "mt5", protocol: str = "esa",
                         spans: list[dict] | str | None = None, comment: str = "",
                         app_version: str = __version__, request: gr.Request = None) -> dict:
        """Save one blind side-by-side judgement: preference "A", "B", "tie" or "both_bad"; spans [{start, end,
        side ("A"/"B"/"input"), category, severity}] with Python character offsets; decoding_a/_b JSON text.
        Returns {"id", "item_key", "message", "preference", "winner", "protocol", "spans"}; raises when nothing
        was saved (bad span, unknown severity, identical systems, …)."""
        try:
            ident = identify(request, settings)
            require_save(ident)
            return compare(store, task, input_text, model_a, output_a, model_b, output_b, preference,
                           ident.annotator(annotator), decoding_a, decoding_b, revision_a, revision_b, dtype_a,
                           dtype_b, family_a, family_b, protocol, spans, comment, app_version, owner=ident.owner)
        except ValueError as e:
            raise gr.Error(f"Not saved: {e}") from None

    def export_endpoint(fmt: str = "jsonl", task: str = "", request: gr.Request = None) -> FileData:
        """Export the comparisons (fmt: csv, jsonl or parquet), optionally of one task; a signed-in annotator
        gets their own. Returns the file."""
        fmt = str(fmt or "").strip().lower()
        if fmt not in ("csv", "jsonl", "parquet"):
            raise gr.Error(f"Not exported: format must be csv, jsonl or parquet, not {fmt!r}")
        try:
            owner = visible_owner(identify(request, settings))
        except ValueError as e:
            raise gr.Error(f"Not exported: {e}") from None
        records = [c for c in query_comparisons(store, task=task or None) if owner is None or c.owner == owner]
        try:
            path = settings.files.write(lambda folder: export_comparisons(records, folder / f"comparisons.{fmt}"))
        except FilesFull as e:
            raise gr.Error(f"Not exported: {e}") from None
        return FileData(path=str(path), orig_name=path.name)

    def import_endpoint(file: FileData, request: gr.Request = None) -> dict:
        """Import a comparison export (CSV, JSONL or Parquet), all or nothing; for admins where rights apply.
        Returns {"added", "updated", "skipped", "deleted", "message"} ("deleted": skipped because deleted here,
        where they stay deleted)."""
        path = file.get("path") if isinstance(file, dict) else getattr(file, "path", None)
        if not path or not is_in_or_equal(path, get_upload_folder()):
            raise gr.Error("Nothing imported: send the file itself (gradio_client.handle_file(path))")
        try:
            ident = identify(request, settings)
            require_admin(ident, "Importing comparisons")
            r = import_comparisons(store, path, by=ident.user)
        except ValueError as e:
            raise gr.Error(f"Nothing imported: {e}") from None
        return {"added": r.added, "updated": r.updated, "skipped": r.skipped, "deleted": r.deleted,
                "message": f"Imported: {r.message}."}

    export_endpoint.__annotations__["return"] = FileData
    import_endpoint.__annotations__["file"] = FileData
    return {"compare": compare_endpoint, "export_comparisons": export_endpoint,
            "import_comparisons": import_endpoint}


def mount(store: AnnotationStore, settings: Any) -> None:
    """Adds the comparison endpoints to the page being built (inside `with gr.Blocks()`)."""
    serve_visitor_files(settings)
    for api_name, fn in endpoints(store, settings).items():
        gr.api(fn, api_name=api_name)
