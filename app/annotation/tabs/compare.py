"""The Compare tab: one input through two systems, the outputs shown blind as A and B, a preference with error spans
on both sides; the Batch tab's compare jobs; and the /compare, /export_comparisons, /import_comparisons endpoints.

The work is plain functions (`check_pair`, `run_pair`, `save_comparison`, `compare`); each part is a layout, the
handlers (plain functions of the store, the identity and the values, returning {name: value}; what runs models gets
the app's context as `ctx`), then its wiring. Which system is A lives in a server-side `gr.State`, never in the
page: a stand-alone comparison reveals it under the judged pair once saved; a compare job's queue never does.
"""
from __future__ import annotations

import dataclasses
import functools
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
from ...models import ModelRequest
from ...tabs.common import DecodingControls, ModelPicker, decoding_controls, model_picker, progress_reporter, \
    status_html
from ...tasklist import JOB_TASKS, TASKS
from ...tasks import Decoding
from ..agreement import system_label
from ..api import batch_process, decoding_dict, input_as_text, parse_decoding, serve_visitor_files, span_fields
from ..batch import StopRequests, load_inputs
from ..comparisons import (PREFERENCE_LABELS, PREFERENCES, Comparison, System, compare_rows, comparison_for_row,
                           comparison_owner, create_compare_job, delete_comparison, export_comparisons,
                           get_comparison, get_compare_job, identical_message, import_comparisons, judge_row,
                           list_compare_jobs, query_comparisons, run_compare_job, same_system, save_comparison,
                           system_from_settings)
from ..job_metrics import compare_job_metrics, render, score_metricx
from ..rights import Identity, identify, require_admin, require_owner_or_admin, require_save, visible_owner
from ..store import AnnotationStore
from ..spans import load_protocols
from . import batch_tab, span_editor
from .batch_tab import DECODING_NAMES, decoding_of, job_settings
from .identity import AnnotatorName
from .span_editor import Frame, span_js
from .wiring import PRIVATE, bind, under

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


def system_values(one: SystemColumn, two: SystemColumn) -> list:
    """Both systems' pickers, then both systems' decoding controls: what `split_systems` takes apart."""
    return [*one.picker.components(), *two.picker.components(), *one.controls.inputs(), *two.controls.inputs()]


def split_systems(values: tuple | list) -> tuple[tuple, tuple, tuple[Decoding, Decoding]]:
    """The values of `system_values`: picker 1, picker 2, the two decodings."""
    n = len(DECODING_NAMES)
    return tuple(values[:4]), tuple(values[4:8]), (decoding_of(values[8:8 + n]), decoding_of(values[8 + n:]))


def compare_frame(prefix: str) -> Frame:
    """The frame of a judge's span editor (A and B side by side, the input below)."""
    return Frame(prefix, TITLES, load_protocols())


@dataclass
class JudgeFields:
    editor: span_editor.SpanEditor
    preference: gr.Radio
    comment: gr.Textbox
    annotator: gr.Textbox


def cleared() -> dict:
    """No preference, no comment: a new pair."""
    return {"judge.preference": None, "judge.comment": ""}


def judge_fields(ctx: AppContext, prefix: str, name: AnnotatorName | None) -> JudgeFields:
    """Lays out the span editor and the judgement of a pair (the owner wires the editor)."""
    editor = span_editor.layout(ctx, compare_frame(prefix), row=("A", "B"))
    with gr.Row():
        preference = gr.Radio([(PREFERENCE_LABELS[p], p) for p in PREFERENCES], value=None, label="Preference",
                              elem_id=f"{prefix}-preference", scale=3)
        annotator = gr.Textbox(label="Annotator", placeholder="your name (remembered in this browser)",
                               max_length=200, elem_id=f"{prefix}-annotator", scale=1)
    comment = gr.Textbox(lines=2, label="Comment (optional)", elem_id=f"{prefix}-comment")
    if name is not None:
        name.remember(annotator)
    return JudgeFields(editor, preference, comment, annotator)


def saved_message(c: Comparison, cmp_id: str, revealed: str = "") -> str:
    said = f"Saved comparison {cmp_id[:8]} ({PREFERENCE_LABELS[c.preference]}, {len(c.spans)} span(s))."
    return f"{said} {revealed}" if revealed else said


def model_choices(ctx: AppContext, task: str) -> gr.Dropdown:
    entry = ctx.assets.models[task]
    return gr.Dropdown(choices=entry.suggestions or [entry.default], value=entry.default)


# ---------------------------------------------------------------------------------------------------------------
# The Compare tab


@dataclass
class CompareTab:
    task: gr.Dropdown
    question: gr.Textbox
    text: gr.Textbox
    one: SystemColumn
    two: SystemColumn
    run: gr.Button
    run_status: gr.HTML
    judge: JudgeFields
    save: gr.Button
    status: gr.HTML               # under the judged pair: the reveal after saving
    pair: gr.State                # the Pair as a dict: server-side, so the page never knows which system is A


def compare_run(store: AnnotationStore, ident: Identity, task_v, question_v, text_v, *values, ctx: AppContext,
                progress: Any = None) -> dict:
    """Both systems run on the input (`values`: see `system_values`); A and B drawn at random, shown blind."""
    inputs = {"question": question_v or "", "context": text_v or ""} if TASKS[task_v].fields == QA_FIELDS \
        else {"text": text_v or ""}
    frame = compare_frame("compare")
    try:
        p1, p2, decodings = split_systems(values)
        result = run_pair(ctx, task_v, inputs, (p1, p2), decodings,
                          progress=progress_reporter(progress or gr.Progress()))
    except (UserError, ValueError) as e:
        return {"run_status": status_html(f"Nothing run: {e}", "error"), "pair": None,
                **under("judge.editor", span_editor.load(frame, {}, task_v, [], frame.protocols.default)),
                **cleared()}
    return {"pair": dataclasses.asdict(result), "status": "", **cleared(),
            "run_status": status_html("Both systems ran. Which one is A was drawn at random: judge, then save to see "
                                      "it."),
            **under("judge.editor", span_editor.load(frame, result.shown(), task_v, [], frame.protocols.default))}


def compare_save(store: AnnotationStore, ident: Identity, pair_v, preference_v, annotator_v, comment_v, protocol_v,
                 spans_v) -> dict:
    """Saves the judgement of the pair on show; the systems are revealed under it (a stand-alone comparison)."""
    if not pair_v:
        return {"status": status_html("Run both systems first, then judge and save.", "warn")}
    p = Pair(**{**pair_v, "systems": tuple(pair_v["systems"]), "outputs": tuple(pair_v["outputs"])})
    if p.saved_id:
        return {"status": status_html(f"This pair is saved already ({p.saved_id[:8]}): run again for a new one.",
                                      "warn")}
    try:
        require_save(ident)
        c = pair_comparison(p, preference_v, ident.annotator(annotator_v), protocol_v, spans_v, comment_v)
        if not c.preference:
            raise ValueError("choose a preference: A is better, B is better, tie or both bad")
        cmp_id = save_comparison(store, c, owner=ident.owner)
    except ValueError as e:
        return {"status": status_html(f"Not saved: {e}", "error")}
    revealed = reveal(p.systems, {"A": p.system_on("A"), "B": p.system_on("B")}, p.task)
    return {"status": status_html(saved_message(c, cmp_id, revealed)), "pair": {**pair_v, "saved_id": cmp_id}}


def compare_task_changed(store: AnnotationStore, ident: Identity, task_v, *, ctx: AppContext) -> dict:
    qa = TASKS[task_v].fields == QA_FIELDS
    source = model_choices(ctx, task_v)
    return {"question": gr.Textbox(visible=qa),
            "text": gr.Textbox(label="Context (the same for both systems)" if qa
                               else "Input (the same for both systems)"),
            "one.picker.source": source, "two.picker.source": source}


def build(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """Lays out the Compare tab (inside a `gr.Tab`) and wires it."""
    tab = layout(ctx, name)
    wire(tab, ctx, store)


def layout(ctx: AppContext, name: AnnotatorName | None = None) -> CompareTab:
    gr.Markdown(ctx.assets.help.get("compare", ""), elem_classes=["tab-help"])
    first = JOB_TASKS[0]
    task = gr.Dropdown([(TASKS[name].title, name) for name in JOB_TASKS], value=first, label="Task",
                       elem_id="compare-task")
    question = gr.Textbox(label="Question", visible=TASKS[first].fields == QA_FIELDS, elem_id="compare-question")
    text = gr.Textbox(lines=4, label="Input (the same for both systems)", elem_id="compare-input")
    one, two = system_columns(ctx, "compare", first)
    run = gr.Button("Run both systems (shown blind as A and B)", variant="primary", elem_id="compare-run")
    run_status = gr.HTML(elem_id="compare-run-status")
    judge = judge_fields(ctx, "compare", name)
    save = gr.Button("Save preference and reveal the systems", variant="primary", elem_id="compare-save")
    status = gr.HTML(elem_id="compare-status")
    return CompareTab(task, question, text, one, two, run, run_status, judge, save, status, gr.State(None))


def wire(tab: CompareTab, ctx: AppContext, store: AnnotationStore) -> None:
    j, settings = tab.judge, ctx.settings

    def on(handler, **kw):
        return bind(functools.partial(handler, **kw), tab, store, settings)

    span_editor.wire(j.editor, store, settings, span_js(ctx, "span_select"))
    tab.task.input(on(compare_task_changed, ctx=ctx), tab.task,
                   [tab.question, tab.text, tab.one.picker.source, tab.two.picker.source], **PRIVATE)
    tab.run.click(on(compare_run, ctx=ctx), [tab.task, tab.question, tab.text, *system_values(tab.one, tab.two)],
                  [tab.pair, tab.status, tab.run_status, j.preference, j.comment, *j.editor.load_outputs()],
                  concurrency_id="models", **PRIVATE)
    tab.save.click(on(compare_save), [tab.pair, j.preference, j.annotator, j.comment, j.editor.protocol,
                                      j.editor.spans], [tab.status, tab.pair], **PRIVATE)


# ---------------------------------------------------------------------------------------------------------------
# The Batch tab's compare jobs


def job_choices(store: AnnotationStore) -> list[tuple[str, str]]:
    out = []
    for job in list_compare_jobs(store):
        rows = compare_rows(store, job.id)
        judged = sum(r.comparison_id is not None for r in rows)
        out.append((f"{job.name} · {job.task} · {judged} of {job.total} judged · {job.created_at[:16]}", job.id))
    return out


@dataclass
class CompareJobs:
    """The Batch tab's compare section: a new job, the job row, the blind A/B queue."""
    upload: gr.File
    task: gr.Dropdown
    one: SystemColumn
    two: SystemColumn
    create: gr.Button
    create_status: gr.HTML
    job: gr.Dropdown
    resume: gr.Button
    stop: gr.Button
    job_status: gr.HTML
    metrics: gr.HTML
    index: gr.State
    where: gr.HTML
    judge: JudgeFields
    prev: gr.Button
    save: gr.Button
    next: gr.Button
    status: gr.HTML

    def shown(self) -> list:
        """What `cjob_show` updates."""
        return [self.index, self.where, *self.judge.editor.load_outputs(), self.judge.preference,
                self.judge.comment, self.status]


def cjob_show(store: AnnotationStore, job_id, i, note="", kind="info", ident: Identity | None = None) -> dict:
    """The queue at row `i`: A and B as drawn for the row, an earlier judgement `ident` may see, or none."""
    if not job_id:
        return {"where": status_html("Pick or create a compare job."), "status": status_html(note, kind)}
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
    frame = compare_frame("batch-compare")
    return {"index": i, "where": status_html(line, "info" if row.processed else "warn"),
            **under("judge.editor", span_editor.load(frame, texts, jb.task, earlier.spans if earlier else [],
                                                     earlier.protocol if earlier else frame.protocols.default)),
            "judge.preference": earlier.preference if earlier else None,
            "judge.comment": earlier.comment if earlier else "", "status": status_html(note, kind) if note else ""}


def cjob_run(ctx: AppContext, store: AnnotationStore, job_id, progress, out_status: str,
             stops: StopRequests) -> dict:
    """Runs (or resumes) the job through both systems; the queue at its first row, the outcome under `out_status`."""
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
    if ctx.metricx is not None and not stopped:
        scored = score_metricx(store, job_id, ctx.metricx,
                               lambda k, total: progress((k, total), desc=f"MetricX: {k} of {total} outputs"))
        note += f" MetricX scored {scored} row(s)." if scored else ""
    if stopped:
        note = f"Stopped on request: {note} Run / resume finishes the rest."
    return {**cjob_show(store, job_id, 0), out_status: status_html(note, "warn" if failed else "info"),
            "job": gr.Dropdown(choices=job_choices(store), value=job_id), "metrics": job_metrics_html(store, None,
                                                                                                   job_id)}


def cjob_create_and_run(store: AnnotationStore, ident: Identity, path, task_v, *values, ctx: AppContext,
                        stops: StopRequests, progress: Any = None) -> dict:
    """A compare job from the uploaded file (admins), run at once (`values`: see `system_values`)."""
    if not path:
        return {"create_status": status_html("Upload a CSV or JSONL file of inputs first.", "warn")}
    progress = progress or gr.Progress()
    try:
        require_admin(ident, "Creating compare jobs")
        inputs = load_inputs(path, max_rows=ctx.settings.batch_rows)
        spec = TASKS[task_v]
        if any(spec.missing(vars(x)) for x in inputs):
            raise ValueError(f"{task_v} needs {' and '.join(spec.fields)} on every row")
        p1, p2, decodings = split_systems(values)
        requests = [ctx.request(task_v, *p) for p in (p1, p2)]
        check_pair(task_v, requests[0], decodings[0], requests[1], decodings[1])
        loaded = [ctx.load(task_v, *p, progress=progress_reporter(progress)) for p in (p1, p2)]
        systems = [job_settings(m, d) for m, d in zip(loaded, decodings)]
        new = create_compare_job(store, inputs, task=task_v, systems=systems, source=Path(path).name,
                                 owner=ident.owner)
    except (ValueError, UserError) as e:
        return {"create_status": status_html(f"No compare job created: {e}", "error")}
    return cjob_run(ctx, store, new.id, progress, "create_status", stops)


def cjob_resume(store: AnnotationStore, ident: Identity, job_id, *, ctx: AppContext, stops: StopRequests,
                progress: Any = None) -> dict:
    if not job_id:
        return {"job_status": status_html("Pick a compare job to run or resume.", "warn")}
    try:
        require_admin(ident, "Running compare jobs")
        return cjob_run(ctx, store, job_id, progress or gr.Progress(), "job_status", stops)
    except (UserError, KeyError, ValueError) as e:
        return {"job_status": status_html(f"Not run: {e}", "error")}


def cjob_save_next(store: AnnotationStore, ident: Identity, job_id, i, preference_v, annotator_v, comment_v,
                   protocol_v, spans_v) -> dict:
    """Saves the row's judgement, then the next row not judged. The systems stay hidden: a compare job is judged
    blind from its first row to its last (a reveal would teach the annotator each system's style)."""
    if not job_id:
        return {"status": status_html("Pick or create a compare job first.", "warn")}
    try:
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
        return {"status": status_html(f"Not saved: {e}", "error")}
    rows = compare_rows(store, job_id)
    nxt_i = next((r.index for r in rows[row.index + 1:] + rows[:row.index] if r.comparison_id is None), row.index)
    return cjob_show(store, job_id, nxt_i, saved_message(c, cmp_id), ident=ident)


def cjob_pick(store: AnnotationStore, ident: Identity, job_id) -> dict:
    if not job_id:
        return {**cjob_show(store, None, 0), "metrics": ""}
    rows = compare_rows(store, job_id)
    return {**cjob_show(store, job_id, next((r.index for r in rows if r.comparison_id is None), 0), ident=ident),
            "metrics": job_metrics_html(store, ident, job_id)}


def job_metrics_html(store: AnnotationStore, ident: Identity | None, job_id: str) -> str:
    """The job's automatic metrics and human preferences, for whoever sees every judgement (an annotator who
    judges blind is not shown which system the metrics favour)."""
    if ident is not None and not ident.sees_all:
        return ""
    try:
        return render(compare_job_metrics(store, job_id))
    except ValueError as e:   # app.metrics refuses what it cannot score (a row over its length limit, …)
        return status_html(f"No automatic metrics: {e}", "warn")


def cjob_move(store: AnnotationStore, ident: Identity, job_id, i, *, step: int) -> dict:
    return cjob_show(store, job_id, max(0, int(i or 0) + step), ident=ident)


def cjob_refresh(store: AnnotationStore, ident: Identity, job_id) -> dict:
    values = job_choices(store)
    return {"job": gr.Dropdown(choices=values, value=job_id if job_id in [v for _, v in values] else None)}


def cjob_stop(store: AnnotationStore, ident: Identity, job_id, *, stops: StopRequests) -> dict:
    """Stops the picked compare job before its next row (the rows done are kept)."""
    try:
        require_admin(ident, "Stopping compare jobs")
    except ValueError as e:
        return {"job_status": status_html(f"Not stopped: {e}", "error")}
    if not job_id or not stops.request(job_id):
        return {"job_status": status_html("That compare job is not running: pick the running one and press Stop.",
                                          "warn")}
    return {"job_status": status_html("Stopping before the next row (the rows done are kept; Run / resume "
                                      "finishes the rest)…", "warn")}


def cjob_task_changed(store: AnnotationStore, ident: Identity, task_v, *, ctx: AppContext) -> dict:
    source = model_choices(ctx, task_v)
    return {"one.picker.source": source, "two.picker.source": source}


def build_batch_tab(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """The Batch tab: its one-system jobs (batch_tab), then compare jobs."""
    batch_tab.build(ctx, store, name)
    build_batch(ctx, store, name)


def build_batch(ctx: AppContext, store: AnnotationStore, name: AnnotatorName | None = None) -> None:
    """The Batch tab's compare section: a file through two systems, then a blind A/B queue."""
    section = layout_jobs(ctx, name)
    wire_jobs(section, ctx, store)


def layout_jobs(ctx: AppContext, name: AnnotatorName | None = None) -> CompareJobs:
    first = JOB_TASKS[0]
    with gr.Accordion("Compare job: every row through two systems, then judged blind as A and B", open=False,
                      elem_id="batch-compare"):
        with gr.Row():
            upload = gr.File(label="Inputs (CSV or JSONL)", file_types=[".csv", ".jsonl"], type="filepath",
                             elem_id="batch-compare-upload")
            task = gr.Dropdown([(TASKS[name].title, name) for name in JOB_TASKS], value=first, label="Task",
                               elem_id="batch-compare-task")
        one, two = system_columns(ctx, "batch-compare", first)
        create = gr.Button("Create compare job and run", variant="primary", elem_id="batch-compare-create")
        create_status = gr.HTML(elem_id="batch-compare-create-status")
        with gr.Row():
            job = gr.Dropdown([], value=None, label="Compare job", scale=4, elem_id="batch-compare-job")
            resume = gr.Button("Run / resume", scale=1, elem_id="batch-compare-resume")
            stop = gr.Button("Stop", scale=1, variant="stop", elem_id="batch-compare-stop")
        job_status = gr.HTML(elem_id="batch-compare-job-status")
        metrics = gr.HTML(elem_id="batch-compare-metrics")
        index = gr.State(0)
        where = gr.HTML(elem_id="batch-compare-where")
        judge = judge_fields(ctx, "batch-compare", name)
        with gr.Row():
            prev = gr.Button("◀ Previous", elem_id="batch-compare-prev")
            save = gr.Button("Save and next", variant="primary", elem_id="batch-compare-save")
            nxt = gr.Button("Next ▶", elem_id="batch-compare-next")
        status = gr.HTML(elem_id="batch-compare-status")
    return CompareJobs(upload, task, one, two, create, create_status, job, resume, stop, job_status, metrics, index,
                       where, judge, prev, save, nxt, status)


def wire_jobs(s: CompareJobs, ctx: AppContext, store: AnnotationStore) -> None:
    settings, stops, shown, j = ctx.settings, StopRequests(), s.shown(), s.judge

    def on(handler, progress=False, **kw):
        return bind(functools.partial(handler, **kw), s, store, settings, progress=progress)

    span_editor.wire(j.editor, store, settings, span_js(ctx, "span_select"))
    # outside the models queue: it runs while the job holds a worker
    s.stop.click(on(cjob_stop, stops=stops), s.job, s.job_status, **PRIVATE)
    s.create.click(on(cjob_create_and_run, ctx=ctx, stops=stops), [s.upload, s.task, *system_values(s.one, s.two)],
                   [*shown, s.create_status, s.job, s.metrics], concurrency_id="models", **PRIVATE)
    s.resume.click(on(cjob_resume, progress=True, ctx=ctx, stops=stops), s.job,
                   [*shown, s.job_status, s.job, s.metrics], concurrency_id="models", **PRIVATE)
    s.job.input(on(cjob_pick), s.job, [*shown, s.metrics], **PRIVATE)
    s.prev.click(on(cjob_move, step=-1), [s.job, s.index], shown, **PRIVATE)
    s.next.click(on(cjob_move, step=1), [s.job, s.index], shown, **PRIVATE)
    s.save.click(on(cjob_save_next), [s.job, s.index, j.preference, j.annotator, j.comment, j.editor.protocol,
                                      j.editor.spans], shown, **PRIVATE).then(on(cjob_refresh), s.job, s.job,
                                                                               **PRIVATE)
    s.task.input(on(cjob_task_changed, ctx=ctx), s.task, [s.one.picker.source, s.two.picker.source], **PRIVATE)
    root = Context.root_block
    if root is not None:
        root.load(on(cjob_refresh), s.job, s.job, **PRIVATE)


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
        try:   # a refusal (rights) and a full files folder (FilesFull is a ValueError) read the same way
            owner = visible_owner(identify(request, settings))
            records = [c for c in query_comparisons(store, task=task or None) if owner is None or c.owner == owner]
            path = settings.files.write(lambda folder: export_comparisons(records, folder / f"comparisons.{fmt}"))
        except ValueError as e:
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
