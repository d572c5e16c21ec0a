"""The annotation UI's work as plain functions (no Gradio): turning a result into an Annotation, saving, filtering,
exporting, importing, and running a batch row through a task. The `/annotate`, `/export` and `/import` endpoints
and the tabs call these.

Every function takes the `AnnotationStore` first; the endpoints bind it (see `endpoints`).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import read_json_line
from ..files import VisitorFiles
from ..models import bits_label
from ..prompts import qa_prompt
from ..settings import Settings
from ..tasklist import task as task_named
from .rights import OPEN, Identity, identify, require_admin, require_owner_or_admin, require_save, visible_owner
from .spans import parse_score, parse_spans, stored_protocol
from .store import Annotation, AnnotationStore, ImportResult

EXPORT_FORMATS = ("csv", "jsonl", "parquet")
NO_RESULT = "There is no result to annotate yet: run the task first, then rate and save it."


# ---------------------------------------------------------------------------------------------------------------
# Fields as the page and the API give them


def parse_rating(value: Any) -> int | None:
    """A rating from a radio, a number box or the API: empty / None / 0 means "not rated"."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"rating must be a whole number from 1 to 5 (or empty), not {value!r}") from None
    if number == 0:
        return None
    if not number.is_integer() or not 1 <= number <= 5:
        raise ValueError(f"rating must be a whole number from 1 to 5 (or empty), not {value!r}")
    return int(number)


def parse_categories(value: Any) -> list[str]:
    """Error category ids from a CheckboxGroup (a list) or the API (a list, or ids separated by commas)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return [str(c) for c in value]


def parse_decoding(value: Any) -> dict[str, Any]:
    """Decoding settings from the API: a JSON object, or its text."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = read_json_line(value, 'decoding must be a JSON object such as {"num_beams": 4}')
    if not isinstance(value, dict):
        raise ValueError(f"decoding must be a JSON object such as {{\"num_beams\": 4}}, not {type(value).__name__}")
    return value


def input_as_text(inputs: dict[str, Any]) -> str:
    """A RunRecord's input as one text, as batch rows record it ("question: … context: …" for QA)."""
    if inputs.get("question") or inputs.get("context"):
        return qa_prompt(inputs.get("question", ""), inputs.get("context", ""))
    return str(inputs.get("text", ""))


def dtype_label(model: dict[str, Any]) -> str:
    """The weights as loaded, e.g. "bfloat16", "bfloat16, 4-bit nf4" or "float32, 8-bit int8-all"."""
    dtype = str(model.get("loaded_dtype") or model.get("dtype") or "")
    quant = model.get("quantization") or "none"
    return f"{dtype}, {bits_label(quant)}" if quant != "none" else dtype


def provenance(record: dict[str, Any]) -> dict[str, Any]:
    """The Annotation fields a RunRecord (as a dict, the tabs' `record` state) supplies."""
    model = record.get("model") or {}
    family = str(model.get("family") or "mt5")
    return {
        "task": record["task"], "model_id": str(model.get("source", "")),
        "model_revision": str(model.get("revision") or ""), "family": family, "dtype": dtype_label(model),
        "decoding": dict(record.get("settings") or {}), "input": input_as_text(record.get("input") or {}),
        "output": str(record.get("output_text", "")), "app_version": str(record.get("app_version") or __version__),
    }


def judgement(rating: Any, corrected_output: Any, error_categories: Any, comment: Any,
              annotator: Any, *, protocol: Any = None, spans: Any = None, esa_score: Any = None) -> dict[str, Any]:
    """The judgement fields, normalised (annotator trimmed; the store checks the rest). The span fields are
    included only when `protocol` is given, so an editor without spans leaves stored spans as they are."""
    out = {"rating": parse_rating(rating),
           "corrected_output": "" if corrected_output is None else str(corrected_output),
           "error_categories": parse_categories(error_categories), "comment": "" if comment is None else str(comment),
           "annotator": "" if annotator is None else str(annotator).strip()}
    if protocol is not None:
        out |= span_fields(protocol, spans, esa_score)
    return out


EMPTY = ("the judgement is empty: give a rating, an ESA score or error spans, an error category, a correction "
         "or a comment")


def require_judged(fields: dict[str, Any], output: str) -> None:
    """Refuses a judgement that says nothing (it would count as done): no rating, ESA score, spans, MQM protocol,
    category or comment, and no corrected output other than the output itself."""
    said = (fields.get("rating") is not None or fields.get("esa_score") is not None or fields.get("spans")
            or fields.get("protocol") == "mqm" or fields.get("error_categories") or str(fields.get("comment")).strip()
            or str(fields.get("corrected_output") or "").strip() not in ("", output.strip()))
    if not said:
        raise ValueError(EMPTY)


def span_fields(protocol: Any, spans: Any, esa_score: Any) -> dict[str, Any]:
    """protocol, spans and ESA score as the store takes them: "none" is stored as "", spans may be JSON text, the
    score a number box's float. An ESA score given with another protocol is kept, so the store refuses it."""
    score = parse_score(esa_score, "ESA score")
    if isinstance(score, float):
        raise ValueError(f"the ESA score must be a whole number from 0 to 100, got {esa_score!r}")
    return {"protocol": stored_protocol(protocol), "spans": parse_spans(spans), "esa_score": score}


def save_from_record(store: AnnotationStore, record: dict[str, Any] | None, rating: Any, corrected_output: Any,
                     error_categories: Any, comment: Any, annotator: Any, ann_id: str | None = None, *,
                     protocol: Any = None, spans: Any = None, esa_score: Any = None,
                     ident: Identity = OPEN) -> str:
    """Save a judgement of a tab's result with the result's provenance; with `ann_id` (this result was already
    saved) update that annotation instead. With `protocol` ("esa", "mqm", "none"), also its spans and ESA score.
    `ident`: who saves (app.annotation.rights): on a protected deployment the annotator is the signed-in account
    and only the owner or an admin may update. Returns the id. ValueError with a message fit for the page."""
    if not record:
        raise ValueError(NO_RESULT)
    require_save(ident)
    fields = judgement(rating, corrected_output, error_categories, comment, ident.annotator(annotator),
                       protocol=protocol, spans=spans, esa_score=esa_score)
    if not fields["annotator"]:
        raise ValueError("Enter your name as annotator before saving (it is remembered in this browser).")
    require_judged(fields, str(record.get("output_text", "")))
    existing = store.get(ann_id) if ann_id else None
    if existing is not None:
        require_owner_or_admin(ident, existing.owner, "change")
        if ident.protected:
            fields["annotator"] = existing.annotator   # an admin's correction stays the annotator's judgement
        store.update(ann_id, by=ident.user, **fields)
        return ann_id
    return store.save(Annotation(**provenance(record), **fields, owner=ident.owner))


# ---------------------------------------------------------------------------------------------------------------
# The API: /annotate, /export and /import


def annotate(store: AnnotationStore, task: str, model_id: str, input_text: str, output_text: str,
             rating: int | None = None, corrected_output: str | None = None,
             error_categories: Sequence[str] | str | None = None, comment: str = "", annotator: str = "",
             model_revision: str = "", family: str = "mt5", dtype: str = "",
             decoding: dict[str, Any] | str | None = None, app_version: str = __version__, protocol: str = "",
             spans: Sequence[dict[str, Any]] | str | None = None, esa_score: Any = None,
             mqm_score: Any = None, ident: Identity = OPEN) -> dict[str, Any]:
    """Save one annotation given as text; `corrected_output` None means "the output as it is". `spans`: a list
    of {start, end, side, category, severity} (Python character offsets into output_text or input_text), or its
    JSON text; `protocol` "esa" (with `esa_score` 0–100) or "mqm" (the score is computed; a `mqm_score` given
    must match it), "" for none.

    Returns {"id", "item_key", "message", "protocol", "spans" (as stored: sorted), "esa_score", "mqm_score"}.
    ValueError with the store's message when a field is invalid: nothing is saved. On a protected deployment
    (`ident`) saving needs a signed-in user, who is the annotator whatever `annotator` says."""
    require_save(ident)
    fields = judgement(rating, output_text if corrected_output is None else corrected_output,
                       error_categories, comment, ident.annotator(annotator), protocol=protocol or "", spans=spans,
                       esa_score=esa_score)
    require_judged(fields, str(output_text or ""))
    ann_id = store.save(Annotation(task=str(task or ""), model_id=str(model_id or ""), input=str(input_text or ""),
                                   output=str(output_text or ""), model_revision=str(model_revision or ""),
                                   family=str(family or "mt5"), dtype=str(dtype or ""),
                                   decoding=parse_decoding(decoding), app_version=str(app_version or ""),
                                   mqm_score=parse_score(mqm_score, "MQM score"), owner=ident.owner,
                                   **fields))
    a = store.get(ann_id)
    return {"id": a.id, "item_key": a.item_key, "message": f"Saved annotation {a.id}.", "protocol": a.protocol,
            "spans": a.spans, "esa_score": a.esa_score, "mqm_score": a.mqm_score}


def import_export_file(store: AnnotationStore, path: str | Path, ident: Identity = OPEN) -> dict[str, Any]:
    """Import an export file (CSV, JSONL or Parquet), all or nothing (admins only on a protected deployment).
    Returns {"added", "updated", "skipped", "message"}; ValueError naming the bad line or row (nothing
    imported)."""
    require_admin(ident, "Importing annotations")
    result: ImportResult = store.import_file(path, by=ident.user)
    return {"added": result.added, "updated": result.updated, "skipped": result.skipped,
            "message": f"Imported {Path(path).name}: {result.message}."}


def filters(task: str | None = None, model: str | None = None, annotator: str | None = None,
            since: Any = None, until: Any = None, min_rating: Any = None, max_rating: Any = None) -> dict[str, Any]:
    """Query filters from the page or the API: empty values and "all" mean no filter; a bare date as `until`
    includes that whole day (the store's rule); a rating range of 1–5 means any rating, unrated included."""
    def text(v: Any) -> str | None:
        v = "" if v is None else str(v).strip()
        return None if v in ("", "(all)", "all") else v

    def day(v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):   # gr.DateTime gives a timestamp
            return dt.datetime.fromtimestamp(v, dt.timezone.utc)
        v = text(v)
        if v is not None and len(v) == 10:
            try:
                return dt.date.fromisoformat(v)
            except ValueError:
                raise ValueError(f"dates are written YYYY-MM-DD (or a full ISO time), not {v!r}") from None
        return v

    lo, hi = parse_rating(min_rating), parse_rating(max_rating)
    out = {"task": text(task), "model": text(model), "annotator": text(annotator), "since": day(since),
           "until": day(until), "min_rating": None if lo in (None, 1) else lo,
           "max_rating": None if hi in (None, 5) else hi}
    if out["min_rating"] is not None and out["max_rating"] is not None and out["min_rating"] > out["max_rating"]:
        raise ValueError(f"the lowest rating ({lo}) is above the highest ({hi})")
    return {k: v for k, v in out.items() if v is not None}


def export(store: AnnotationStore, fmt: str = "jsonl", task: str | None = None, model: str | None = None,
           annotator: str | None = None, since: Any = None, until: Any = None, min_rating: Any = None,
           max_rating: Any = None, folder: str | Path | None = None, ident: Identity = OPEN,
           files: VisitorFiles | None = None) -> Path:
    """Write the annotations that pass the filters to a new file (CSV, JSONL or Parquet) named with the UTC time,
    in `folder`, or else in a new folder of `files` (the deployment's visitor files: default
    `Settings.from_env().files`); returns its path. ValueError for an unknown format; FilesFull (a ValueError
    naming the limit; nothing kept) when the file would pass the files' size cap. On a protected deployment
    (`ident`) an annotator exports their own annotations; admins export everyone's."""
    owner = visible_owner(ident)
    fmt = str(fmt or "").strip().lower().lstrip(".")
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    chosen = filters(task, model, annotator, since, until, min_rating, max_rating)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")

    def write(where: Path) -> Path:
        return store.export(where / f"annotations-{stamp}.{fmt}", fmt, **chosen,
                            **({} if owner is None else {"owner": owner}))

    if folder is None:
        return (files or Settings.from_env().files).write(write)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return write(Path(folder))


def endpoints(store: AnnotationStore, settings: Any = None) -> dict[str, Callable]:
    """`annotate`, `export` and `import` bound to `store`, with plain type hints, for `gr.api(..., api_name=...)`.
    `/export` returns the file itself (a client downloads it) and `/import` takes one, so this imports Gradio's
    FileData. Every refusal raises gradio.Error: a client gets an exception with the message, never a quiet
    "success" with nothing saved. `settings` (app.settings.Settings; default: open use) decides the rights: each
    endpoint identifies the caller from its own request."""
    # Lazy: the rest of this module is plain functions that the store's tests and scripts use without Gradio.
    from gradio import Error, Request
    from gradio.data_classes import FileData
    from gradio.utils import get_upload_folder, is_in_or_equal

    settings = settings or Settings()

    def who(request: Any) -> Identity:
        return identify(request, settings)

    def annotate_endpoint(task: str, model_id: str, input_text: str, output_text: str, rating: int | None = None,
                          corrected_output: str | None = None, error_categories: list[str] | None = None,
                          comment: str = "", annotator: str = "", model_revision: str = "", family: str = "mt5",
                          dtype: str = "", decoding: str = "", app_version: str = __version__, protocol: str = "",
                          spans: list[dict] | str | None = None, esa_score: int | None = None,
                          mqm_score: float | None = None, request: Request = None) -> dict:
        """Save one annotation. error_categories: ids from assets/error_categories.json (per task); decoding:
        JSON text; protocol: "esa", "mqm" or ""; spans: [{start, end, side ("output"/"input"), category,
        severity (minor/major/critical)}] with Python character offsets; esa_score 0–100 (ESA); mqm_score is
        computed (a value given must match). Returns {"id", "item_key", "message", "protocol", "spans",
        "esa_score", "mqm_score"}; raises an error saying what was wrong when nothing was saved."""
        try:
            return annotate(store, task, model_id, input_text, output_text, rating, corrected_output,
                            error_categories, comment, annotator, model_revision, family, dtype, decoding,
                            app_version, protocol, spans, esa_score, mqm_score, ident=who(request))
        except ValueError as e:
            raise Error(f"Not saved: {e}") from None

    def import_endpoint(file: FileData, request: Request = None) -> dict:
        """Import an export file (CSV, JSONL or Parquet: what /export gives), all or nothing; ids already here
        are kept unless the file's copy was edited later. Returns {"added", "updated", "skipped", "message"}."""
        path = file.get("path") if isinstance(file, dict) else getattr(file, "path", None)
        name = (file.get("orig_name") if isinstance(file, dict) else getattr(file, "orig_name", None)) or ""
        # The payload is not preprocessed (gr.api): accept only a file the client uploaded, never a server path.
        if not path or not is_in_or_equal(path, get_upload_folder()):
            raise Error("Nothing imported: send the file itself (gradio_client.handle_file(path)), not a path on "
                        "the server")
        try:
            result = import_export_file(store, path, who(request))
        except ValueError as e:
            raise Error(f"Nothing imported: {e}") from None
        if name:
            result["message"] = result["message"].replace(Path(path).name, name, 1)
        return result

    def export_endpoint(fmt: str = "jsonl", task: str = "", model: str = "", annotator: str = "", since: str = "",
                        until: str = "", min_rating: int | None = None, max_rating: int | None = None,
                        request: Request = None):
        """Export annotations (fmt: csv, jsonl or parquet), filtered; dates YYYY-MM-DD. Returns the file."""
        try:
            path = export(store, fmt, task, model, annotator, since, until, min_rating, max_rating,
                          ident=who(request), files=settings.files)
        except ValueError as e:
            raise Error(f"Not exported: {e}") from None   # a client sees the message
        return FileData(path=str(path), orig_name=path.name)

    export_endpoint.__annotations__["return"] = FileData   # a real class: Gradio reads it to type the endpoint

    import_endpoint.__annotations__["file"] = FileData
    for fn in (annotate_endpoint, import_endpoint, export_endpoint):   # injected by Gradio, not an API parameter
        fn.__annotations__["request"] = Request

    return {"annotate": annotate_endpoint, "export": export_endpoint, "import": import_endpoint}


def mount(store: AnnotationStore, settings: Any = None) -> None:
    """Add the `/annotate`, `/export` and `/import` endpoints to the page being built (inside `with
    gr.Blocks()`)."""
    import gradio as gr   # lazy, as in `endpoints`: only the page needs Gradio

    settings = settings or Settings()
    serve_visitor_files(settings)
    eps = endpoints(store, settings)
    gr.api(eps["annotate"], api_name="annotate")
    gr.api(eps["export"], api_name="export")
    gr.api(eps["import"], api_name="import")


def serve_visitor_files(settings: Settings) -> None:
    """Lets Gradio serve the exports from the deployment's files folder (app.files) as they are.

    A file a handler returns (to a `gr.File`, or as an endpoint's FileData) is otherwise copied into Gradio's
    cache. Those copies belong to the component that returned them (`Blocks.temp_file_sets`), so Gradio 6's
    `delete_cache` (app/main.py: every UPLOAD_MAX_AGE_S, those older than UPLOAD_MAX_AGE_S) does remove them, but by
    age only: a second copy of every export, for up to twice that age, outside the cap. A static path is served
    without a copy, so the files folder's cap bounds all of it; and it is allowed wherever the folder is (`/data`
    on a Space is outside the working and temp folders Gradio serves from by default). Gradio serves any file in
    a static folder to whoever has its URL: the folders' names are random (128 bits), and the folder must be one
    of its own (MT5_STUDIO_FILES_DIR)."""
    import gradio as gr

    gr.set_static_paths([settings.files_dir])


# ---------------------------------------------------------------------------------------------------------------
# Batch: one row through a task


def row_output(task: str, result: Any) -> str:
    """A task function's result as the one text a batch row stores and an annotator corrects."""
    return task_named(task).as_text(result)


def batch_process(task: str, loaded: Any, decoding: Any) -> Callable[[Any], str]:
    """`process(row)` for `app.annotation.batch.run_batch`: runs `task` (app.tasklist) on a BatchRow."""
    spec = task_named(task)   # ValueError for an unknown task, before any row runs

    def process(row: Any) -> str:
        return spec.as_text(spec.run(loaded, row.inputs, decoding))

    return process


def decoding_dict(decoding: Any) -> dict[str, Any]:
    return dataclasses.asdict(decoding) if dataclasses.is_dataclass(decoding) else dict(decoding or {})
