"""The annotation UI's work as plain functions (no Gradio): turning a result into an Annotation, saving, filtering,
exporting, and running a batch row through a task. The `/annotate` and `/export` endpoints and the tabs call these.

Every function takes the `AnnotationStore` first; the endpoints bind it (see `endpoints`).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..models import bits_label
from ..prompts import qa_prompt
from ..tasklist import task as task_named
from .store import Annotation, AnnotationStore

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
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"decoding must be a JSON object such as {{\"num_beams\": 4}}: {e}") from None
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
              annotator: Any) -> dict[str, Any]:
    """The judgement fields, normalised (annotator trimmed; the store checks the rest)."""
    return {"rating": parse_rating(rating),
            "corrected_output": "" if corrected_output is None else str(corrected_output),
            "error_categories": parse_categories(error_categories), "comment": "" if comment is None else str(comment),
            "annotator": "" if annotator is None else str(annotator).strip()}


def save_from_record(store: AnnotationStore, record: dict[str, Any] | None, rating: Any, corrected_output: Any,
                     error_categories: Any, comment: Any, annotator: Any, ann_id: str | None = None) -> str:
    """Save a judgement of a tab's result with the result's provenance; with `ann_id` (this result was already
    saved) update that annotation instead. Returns the id. ValueError with a message fit for the page."""
    if not record:
        raise ValueError(NO_RESULT)
    fields = judgement(rating, corrected_output, error_categories, comment, annotator)
    if not fields["annotator"]:
        raise ValueError("Enter your name as annotator before saving (it is remembered in this browser).")
    if ann_id and store.get(ann_id) is not None:
        store.update(ann_id, **fields)
        return ann_id
    return store.save(Annotation(**provenance(record), **fields))


# ---------------------------------------------------------------------------------------------------------------
# The API: /annotate and /export


def annotate(store: AnnotationStore, task: str, model_id: str, input_text: str, output_text: str,
             rating: int | None = None, corrected_output: str | None = None,
             error_categories: Sequence[str] | str | None = None, comment: str = "", annotator: str = "",
             model_revision: str = "", family: str = "mt5", dtype: str = "",
             decoding: dict[str, Any] | str | None = None, app_version: str = __version__) -> dict[str, Any]:
    """Save one annotation given as text; `corrected_output` None means "the output as it is".

    Returns {"id": the new id, or "" when nothing was saved, "message": what happened}; an invalid field gives
    an empty id and the store's message (nothing is saved), so an API client sees why."""
    try:
        fields = judgement(rating, output_text if corrected_output is None else corrected_output,
                           error_categories, comment, annotator)
        ann_id = store.save(Annotation(task=str(task or ""), model_id=str(model_id or ""), input=str(input_text or ""),
                                       output=str(output_text or ""), model_revision=str(model_revision or ""),
                                       family=str(family or "mt5"), dtype=str(dtype or ""),
                                       decoding=parse_decoding(decoding), app_version=str(app_version or ""),
                                       **fields))
    except ValueError as e:
        return {"id": "", "message": f"Not saved: {e}"}
    return {"id": ann_id, "message": f"Saved annotation {ann_id}."}


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
           max_rating: Any = None, folder: str | Path | None = None) -> Path:
    """Write the annotations that pass the filters to a new file (CSV, JSONL or Parquet) in a fresh temporary
    folder (or `folder`), named with the UTC time; returns its path. ValueError for an unknown format."""
    fmt = str(fmt or "").strip().lower().lstrip(".")
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    where = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="mt5studio-export-"))
    where.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return store.export(where / f"annotations-{stamp}.{fmt}", fmt,
                        **filters(task, model, annotator, since, until, min_rating, max_rating))


def endpoints(store: AnnotationStore) -> dict[str, Callable]:
    """`annotate` and `export` bound to `store`, with plain type hints, for `gr.api(..., api_name=...)`.
    `/export` returns the file itself (a client downloads it), so this imports Gradio's FileData."""
    # Lazy: the rest of this module is plain functions that the store's tests and scripts use without Gradio.
    from gradio import Error
    from gradio.data_classes import FileData

    def annotate_endpoint(task: str, model_id: str, input_text: str, output_text: str, rating: int | None = None,
                          corrected_output: str | None = None, error_categories: list[str] | None = None,
                          comment: str = "", annotator: str = "", model_revision: str = "", family: str = "mt5",
                          dtype: str = "", decoding: str = "", app_version: str = __version__) -> dict:
        """Save one annotation. error_categories: ids from assets/error_categories.json; decoding: JSON text.
        Returns {"id", "message"}; the id is empty when nothing was saved."""
        return annotate(store, task, model_id, input_text, output_text, rating, corrected_output,
                        error_categories, comment, annotator, model_revision, family, dtype, decoding, app_version)

    def export_endpoint(fmt: str = "jsonl", task: str = "", model: str = "", annotator: str = "", since: str = "",
                        until: str = "", min_rating: int | None = None, max_rating: int | None = None):
        """Export annotations (fmt: csv, jsonl or parquet), filtered; dates YYYY-MM-DD. Returns the file."""
        try:
            path = export(store, fmt, task, model, annotator, since, until, min_rating, max_rating)
        except ValueError as e:
            raise Error(f"Not exported: {e}") from None   # a client sees the message
        return FileData(path=str(path), orig_name=path.name)

    export_endpoint.__annotations__["return"] = FileData   # a real class: Gradio reads it to type the endpoint

    return {"annotate": annotate_endpoint, "export": export_endpoint}


def mount(store: AnnotationStore) -> None:
    """Add the `/annotate` and `/export` endpoints to the page being built (call inside `with gr.Blocks()`)."""
    import gradio as gr   # lazy, as in `endpoints`: only the page needs Gradio

    eps = endpoints(store)
    gr.api(eps["annotate"], api_name="annotate")
    gr.api(eps["export"], api_name="export")


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
