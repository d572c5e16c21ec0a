"""Campaign endpoints for `gr.api`: /campaign_create, /campaign_next, /campaign_item, /campaign_submit,
/campaign_skip, /campaign_results, /campaign_export (docs/campaigns.md gives each one's JSON). Every endpoint
identifies its caller from the request (app.annotation.rights.identify), with the same rights as the page; a
refusal is a gradio.Error carrying the message. In open use (nobody signs in) the annotator is the `annotator`
argument."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..settings import Settings
from .campaign_exchange import export_campaign
from .campaigns import CampaignSpec, create_campaign, get_item, next_item, results, skip, submit
from .rights import Identity, identify
from .store import AnnotationStore


def caller(request: Any, settings: Settings, annotator: str = "") -> Identity:
    """The request's identity; in open use, named by the `annotator` the client gives."""
    ident = identify(request, settings)
    if not ident.protected:
        ident = dataclasses.replace(ident, user=str(annotator or "").strip())
    return ident


def parse_labels(labels: Any) -> tuple[str, ...]:
    """Labels from the API: a list, JSON list text, or names separated by commas."""
    if labels is None or labels == "":
        return ()
    if isinstance(labels, str):
        text = labels.strip()
        labels = json.loads(text) if text.startswith("[") else [x for x in text.split(",")]
    return tuple(str(x).strip() for x in labels if str(x).strip())


def parse_judgement(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise ValueError('Not saved: the judgement is not valid JSON: send an object such as {"score": 73}') \
                from None
    return value


def uploaded_path(file: Any) -> str | None:
    """The path of a file the client uploaded; ValueError for a path on the server (never read those)."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    if file is None or file == "":
        return None
    path = file.get("path") if isinstance(file, dict) else getattr(file, "path", None)
    if not path or not is_in_or_equal(path, get_upload_folder()):
        raise ValueError("send the items file itself (gradio_client.handle_file(path)), not a path on the server")
    return path


def endpoints(store: AnnotationStore, settings: Settings | None = None) -> dict[str, Callable]:
    """The campaign endpoints bound to `store`, by API name, for `gr.api(fn, api_name=name)`."""
    from gradio import Error, Request
    from gradio.data_classes import FileData

    settings = settings or Settings()

    def refuse(prefix: str, e: Exception) -> Error:
        text = str(e)
        return Error(text if text.startswith(prefix) or not prefix else f"{prefix}{text}")

    def campaign_create(name: str, task: str, protocol: str, items: FileData | None = None, guidelines: str = "",
                        overlap: int = 1, blind: bool | None = None, labels: list[str] | str | None = None,
                        check_fraction: float = 0.0, job_id: str = "", batch_size: int = 0,
                        request: Request = None) -> dict:
        """Create a campaign (admins): items from a CSV/JSONL/Parquet file of plain records, or job_id of a batch
        or compare job; batch_size 0 assigns items one at a time, n > 0 in fixed batches of n. Returns {"id",
        "items", "checks", "systems", "blind", "message"}."""
        try:
            path = uploaded_path(items)
            spec = CampaignSpec(name, task, protocol, guidelines or "", overlap, blind, parse_labels(labels),
                                check_fraction, batch_size=batch_size)
            out = create_campaign(store, spec, path, ident=caller(request, settings), job_id=job_id or None)
        except ValueError as e:
            raise refuse("Not created: ", e) from None
        if isinstance(items, dict) and items.get("orig_name") and path:
            out["message"] = out["message"].replace(Path(path).name, items["orig_name"])
        return out

    def campaign_next(campaign_id: str, annotator: str = "", request: Request = None) -> dict:
        """This annotator's next item, blinded: {"done", "item_id", "source", "outputs": [{"slot", "text"}],
        "protocol", "categories", "labels", "guidelines", "progress": {"done", "total"}}."""
        try:
            return next_item(store, campaign_id, caller(request, settings, annotator))
        except ValueError as e:
            raise refuse("", e) from None

    def campaign_item(campaign_id: str, item_id: str, annotator: str = "", request: Request = None) -> dict:
        """An item assigned to this annotator, with their judgement so far ("judgement", "comment")."""
        try:
            return get_item(store, campaign_id, item_id, caller(request, settings, annotator))
        except ValueError as e:
            raise refuse("", e) from None

    def campaign_submit(campaign_id: str, item_id: str, judgement: dict | str, seconds: float = 0.0,
                        annotator: str = "", request: Request = None) -> dict:
        """Save (or edit) this annotator's judgement of an item assigned to them: {"id", "message"}."""
        try:
            return submit(store, campaign_id, item_id, parse_judgement(judgement), seconds,
                          caller(request, settings, annotator))
        except ValueError as e:
            raise refuse("Not saved: ", e) from None

    def campaign_skip(campaign_id: str, item_id: str, reason: str, annotator: str = "",
                      request: Request = None) -> dict:
        """Skip an item assigned to this annotator, with a reason: {"message"}."""
        try:
            return skip(store, campaign_id, item_id, reason, caller(request, settings, annotator))
        except ValueError as e:
            raise refuse("", e) from None

    def campaign_results(campaign_id: str, request: Request = None) -> dict:
        """The campaign's results (admins): systems, win_rates, agreement, span_agreement, annotators."""
        try:
            return results(store, campaign_id, caller(request, settings))
        except ValueError as e:
            raise refuse("", e) from None

    def campaign_export(campaign_id: str, fmt: str = "jsonl", annotator: str = "", request: Request = None):
        """The campaign's judgements as a file (jsonl or csv): everyone's for admins, one's own otherwise."""
        fmt = str(fmt or "jsonl").strip().lower().lstrip(".")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        ident = caller(request, settings, annotator)
        try:
            path = settings.files.write(lambda folder: export_campaign(
                store, campaign_id, ident, folder / f"campaign-{str(campaign_id)[:12]}-{stamp}.{fmt}"))
        except ValueError as e:
            raise refuse("Not exported: ", e) from None
        return FileData(path=str(path), orig_name=path.name)

    campaign_create.__annotations__["items"] = FileData | None
    campaign_export.__annotations__["return"] = FileData
    eps = {"campaign_create": campaign_create, "campaign_next": campaign_next, "campaign_item": campaign_item,
           "campaign_submit": campaign_submit, "campaign_skip": campaign_skip, "campaign_results": campaign_results,
           "campaign_export": campaign_export}
    for fn in eps.values():   # injected by Gradio, not an API parameter
        fn.__annotations__["request"] = Request
    return eps


def mount(store: AnnotationStore, settings: Settings | None = None) -> None:
    """Add the campaign endpoints to the page being built (inside `with gr.Blocks()`)."""
    import gradio as gr

    for name, fn in endpoints(store, settings).items():
        gr.api(fn, api_name=name)
