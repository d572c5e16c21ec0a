"""The Campaigns tab: judging a campaign's items one screen at a time, keyboard first, and (admins) creating a
campaign and reading its results. The work is app.annotation.campaigns; this module is layout, then wiring.

The judging screen is drawn in the browser by assets/campaign.js from one payload (`screen`, a JSON object in a
data attribute of the `#campaign-screen` HTML): the item as the annotator may see it (slots A, B, never system
names in a blind campaign), their judgement so far, their items in order (back and forward), their progress and a
message. What the annotator does comes back as one action object through the screen's `act` event
(assets/campaign_collect.js hands it over): {"do": "open" | "next" | "item" | "submit" | "skip", "item_id",
"judgement", "seconds", "reason"}; `judge_act` does it and answers with the next payload.
"""
from __future__ import annotations

import dataclasses
import html
import json
import uuid
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from ...context import AppContext
from ...tabs.common import status_html
from ..campaign_api import parse_labels, uploaded_path
from ..campaigns import (CampaignSpec, create_campaign, get_campaign, get_item, list_campaigns, my_items, next_item,
                         results, skip, submit)
from ..protocols import PROTOCOLS, protocol_info, protocol_named
from ..rights import Identity, identify
from ..spans import load_protocols
from ..store import AnnotationStore, categories_by_task
from .identity import AnnotatorName
from .panel import span_js

NO_CAMPAIGN = "Pick a campaign above to start judging."
BLIND_CHOICES = [("Automatic (blind when several systems)", "auto"), ("Blind", "yes"), ("Not blind", "no")]


def annotator(ident: Identity, typed: Any) -> Identity:
    """The judging identity: the signed-in account, or in open use the name typed in the page."""
    return ident if ident.protected else dataclasses.replace(ident, user=str(typed or "").strip())


# ---------------------------------------------------------------------------------------------------------------
# Handlers: plain functions of (store, identity, values), tested without a server


@dataclass(frozen=True)
class Judging:
    """What the judging screen shows: the payload for assets/campaign.js and the campaign's guidelines."""
    screen: dict[str, Any]
    guidelines: str = ""


def campaign_choices(store: AnnotationStore) -> list[tuple[str, str]]:
    """(label, id) of every campaign, newest first, for the dropdowns."""
    info = protocol_info()
    return [(f"{c.name} — {info[c.protocol].label if c.protocol in info else c.protocol} ({c.task})", c.id)
            for c in list_campaigns(store)]


def judge_open(store: AnnotationStore, ident: Identity, campaign_id: Any, typed: Any) -> Judging:
    """The annotator's next item of the campaign picked (or a line saying what to do first)."""
    return judge_act(store, ident, campaign_id, typed, {"do": "open"})


def judge_act(store: AnnotationStore, ident: Identity, campaign_id: Any, typed: Any, action: Any) -> Judging:
    """Do one action of the judging screen and answer with the screen to show next. A refused submit answers
    with the same item and the message (the page keeps what the annotator gave)."""
    if not campaign_id:
        return Judging(screen_payload(message=NO_CAMPAIGN))
    who = annotator(ident, typed)
    try:
        act = json.loads(action) if isinstance(action, str) else dict(action or {})
        camp = get_campaign(store, str(campaign_id))
    except (ValueError, TypeError) as e:
        return Judging(screen_payload(message=str(e), kind="error"))
    do, item_id = str(act.get("do") or "next"), str(act.get("item_id") or "")
    message, kind, forget = "", "info", ""
    try:
        if do == "submit":
            message = submit(store, camp.id, item_id, act.get("judgement"), act.get("seconds", 0), who)["message"]
            forget = item_id
        elif do == "skip":
            message = skip(store, camp.id, item_id, act.get("reason", ""), who)["message"]
            forget = item_id
        view = get_item(store, camp.id, item_id, who) if do == "item" else next_item(store, camp.id, who)
    except ValueError as e:     # Refused included: the message says what to do
        if do not in ("submit", "skip") or not item_id:
            return Judging(screen_payload(camp, message=str(e), kind="error"), camp.guidelines)
        message, kind = str(e), "error"
        view = _same_item(store, camp.id, item_id, who)
    return Judging(screen_payload(camp, view, my_items(store, camp.id, who), who.user, message=message, kind=kind,
                                  forget=forget), camp.guidelines)


def _same_item(store: AnnotationStore, campaign_id: str, item_id: str, who: Identity) -> dict[str, Any] | None:
    try:
        return get_item(store, campaign_id, item_id, who)
    except ValueError:
        return None


def screen_payload(camp: Any = None, view: dict[str, Any] | None = None, mine: list[str] = (), who: str = "", *,
                   message: str = "", kind: str = "info", forget: str = "") -> dict[str, Any]:
    """The payload assets/campaign.js draws. `view`: an item as campaigns.next_item / get_item give it (already
    blinded); `forget`: an item whose browser draft is now saved or skipped."""
    out: dict[str, Any] = {"nonce": uuid.uuid4().hex[:12], "message": message, "kind": kind, "forget": forget,
                           "state": "empty" if camp is None else "done" if view and view["done"] else
                           "item" if view else "error"}
    if camp is None:
        return out
    proto, info = protocol_named(camp.protocol), protocol_info().get(camp.protocol)
    out |= {"campaign_id": camp.id, "campaign": camp.name, "annotator": who, "protocol": camp.protocol,
            "protocol_label": info.label if info else camp.protocol, "protocol_help": info.help if info else "",
            "compares": proto.compares, "has_spans": proto.has_spans, "labels": list(camp.labels),
            "severities": [dataclasses.asdict(s) for s in load_protocols().severities],
            "categories": span_categories(camp), "category_required": camp.protocol == "mqm",
            "has_guidelines": bool(camp.guidelines.strip()), "mine": list(mine)}
    if view:
        out["progress"] = view["progress"]
    if view and not view["done"]:
        out["item"] = {k: view[k] for k in ("item_id", "source", "outputs", "reference") if k in view}
        out["judgement"], out["comment"] = view.get("judgement"), view.get("comment", "")
        out["position"] = mine.index(view["item_id"]) if view["item_id"] in mine else len(mine)
    elif view:
        out["message"] = " ".join(x for x in (message, view.get("message", "")) if x)
    return out


def span_categories(camp: Any) -> list[dict[str, str]]:
    """The categories a span may take: MQM's typology, else the campaign task's error categories."""
    if camp.protocol == "mqm":
        return [dataclasses.asdict(c) for c in load_protocols().get("mqm").categories]
    return [dict(c) for c in camp.categories]


def screen_html(payload: dict[str, Any]) -> str:
    """The screen's HTML: the payload in a data attribute (escaped) and the element campaign.js draws into."""
    data = html.escape(json.dumps(payload, ensure_ascii=False), quote=True)
    return f'<div class="cj-payload" hidden data-payload="{data}"></div><div class="cj-app" tabindex="-1"></div>'


@dataclass(frozen=True)
class CampaignForm:
    """The admin's form, as typed."""
    name: str = ""
    task: str = ""
    protocol: str = ""
    guidelines: str = ""
    overlap: Any = 1
    blind: str = "auto"
    labels: str = ""
    check_fraction: Any = 0.0
    items: Any = None       # the uploaded file (a path in the upload folder)


@dataclass(frozen=True)
class Created:
    message: str
    kind: str = "info"
    campaign_id: str = ""
    choices: tuple[tuple[str, str], ...] = ()


def create(store: AnnotationStore, ident: Identity, form: CampaignForm) -> Created:
    """Create a campaign from the admin's form (admins only on a protected deployment); the message says what
    was wrong, and nothing is stored then."""
    try:
        overlap = float(form.overlap if form.overlap not in (None, "") else 1)
        spec = CampaignSpec(str(form.name or ""), str(form.task or ""), str(form.protocol or ""),
                            str(form.guidelines or ""), int(overlap) if overlap.is_integer() else overlap,
                            {"yes": True, "no": False}.get(form.blind), parse_labels(form.labels),
                            float(form.check_fraction or 0))
        path = uploaded_path(form.items) if isinstance(form.items, dict) else form.items
        if not path:
            raise ValueError("upload the items file (CSV, JSONL or Parquet of plain records)")
        out = create_campaign(store, spec, path, ident=ident)
    except (ValueError, TypeError) as e:
        return Created(f"Not created: {e}", "error", choices=tuple(campaign_choices(store)))
    return Created(out["message"], "info", out["id"], tuple(campaign_choices(store)))


@dataclass(frozen=True)
class ResultTables:
    """A campaign's results as tables (`results` of app.annotation.campaigns), and a line about them."""
    message: str
    kind: str = "info"
    systems: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    win_rates: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    agreement: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    annotators: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    metrics: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    correlations: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def show_results(store: AnnotationStore, ident: Identity, campaign_id: Any) -> ResultTables:
    """The campaign's results (admins only on a protected deployment)."""
    if not campaign_id:
        return ResultTables("Pick a campaign first.", "warn")
    try:
        r = results(store, str(campaign_id), ident)
    except ValueError as e:
        return ResultTables(str(e), "error")
    spans = r["span_agreement"]
    warn = [a["warning"] for a in r["agreement"] if a.get("warning")]
    line = (f"{r['name']}: {r['judgements']} judgement(s) of {r['items']} item(s), protocol {r['protocol']}, "
            f"overlap {r['overlap']}." + (f" Span agreement F1 {spans['f1']} over {spans['pairs']} pair(s)."
                                          if spans else "") + "".join(f" {w}" for w in warn))
    return ResultTables(line, "warn" if warn else "info", pd.DataFrame(r["systems"]), pd.DataFrame(r["win_rates"]),
                        pd.DataFrame(r["agreement"]), pd.DataFrame(r["annotators"]), pd.DataFrame(r["metrics"]),
                        pd.DataFrame(r["correlations"]))


# ---------------------------------------------------------------------------------------------------------------
# Layout


@dataclass
class JudgeView:
    campaign: gr.Dropdown
    refresh: gr.Button
    name: gr.Textbox
    guidelines: gr.Markdown
    screen: gr.HTML
    action: gr.Textbox


@dataclass
class AdminView:
    form: dict[str, Any]        # CampaignForm field -> component
    create: gr.Button
    status: gr.HTML
    campaign: gr.Dropdown
    show: gr.Button
    line: gr.HTML
    tables: dict[str, gr.Dataframe]


@dataclass
class Layout:
    judge: JudgeView
    admin: AdminView


def judge_layout(ctx: AppContext, names: AnnotatorName | None) -> JudgeView:
    with gr.Row(elem_id="campaign-pick"):
        campaign = gr.Dropdown([], value=None, label="Campaign", elem_id="campaign-choice", scale=3)
        refresh = gr.Button("↻ List", size="sm", scale=0, min_width=60, elem_id="campaign-refresh")
        name = gr.Textbox(label="Annotator", placeholder="your name (kept in this browser)", scale=1,
                          elem_id="campaign-annotator")
        if names is not None:
            names.remember(name)
    with gr.Column(elem_id="campaign-guidelines-box"):
        gr.HTML('<div class="cj-guide-head">Guidelines <span class="cj-hint">press <kbd>g</kbd> or <kbd>Enter'
                '</kbd> to close</span></div>')
        guidelines = gr.Markdown(elem_id="campaign-guidelines")
    screen = gr.HTML(screen_html(screen_payload(message=NO_CAMPAIGN)), js_on_load=span_js(ctx, "campaign"),
                     elem_id="campaign-screen")
    action = gr.Textbox(visible="hidden", elem_id="campaign-action")
    with gr.Accordion("How judging works (keys)", open=False, elem_id="campaign-help"):
        gr.Markdown(ctx.assets.help.get("campaign", ""))
    return JudgeView(campaign, refresh, name, guidelines, screen, action)


def admin_layout() -> AdminView:
    gr.Markdown("Create a campaign (admins on a protected deployment), then read its results.")
    with gr.Row():
        name = gr.Textbox(label="Name", elem_id="campaign-new-name")
        task = gr.Dropdown(list(categories_by_task()), value="summarization", label="Task", elem_id="campaign-new-task")
        protocol = gr.Dropdown([(p.label, p.id) for p in protocol_info().values() if p.id in PROTOCOLS],
                               value="esa", label="Protocol", elem_id="campaign-new-protocol")
    with gr.Row():
        overlap = gr.Number(1, label="Overlap (annotators per item)", minimum=1, precision=0,
                            elem_id="campaign-new-overlap")
        blind = gr.Radio(BLIND_CHOICES, value="auto", label="Blind", elem_id="campaign-new-blind")
        check = gr.Number(0.0, label="Attention checks (share of items, 0–0.5)", minimum=0, maximum=0.5,
                          elem_id="campaign-new-checks")
    labels = gr.Textbox(label="Labels (label choice and relabelling: comma-separated)", elem_id="campaign-new-labels")
    guidelines = gr.Textbox(label="Guidelines (Markdown, shown to every annotator)", lines=5,
                            elem_id="campaign-new-guidelines")
    items = gr.File(label="Items: CSV, JSONL or Parquet of plain records", file_types=[".csv", ".jsonl", ".parquet"],
                    elem_id="campaign-new-items")
    create_btn = gr.Button("Create campaign", variant="primary", elem_id="campaign-create")
    status = gr.HTML(elem_id="campaign-create-status")
    with gr.Row():
        campaign = gr.Dropdown([], value=None, label="Campaign", elem_id="campaign-results-choice", scale=3)
        show = gr.Button("Show results", elem_id="campaign-results-show", scale=0)
    line = gr.HTML(elem_id="campaign-results-line")
    tables = {key: gr.Dataframe(label=title, interactive=False, wrap=True, elem_id=f"campaign-results-{key}")
              for key, title in (("systems", "Systems (mean, bootstrap 95% interval)"),
                                 ("win_rates", "Win rates (Wilson 95% interval)"),
                                 ("agreement", "Agreement (Krippendorff's alpha)"), ("annotators", "Annotators"),
                                 ("metrics", "Automatic metrics against the references (bootstrap 95% interval)"),
                                 ("correlations", "Human–metric correlation (Pearson, Kendall's tau-b)"))}
    form = {"name": name, "task": task, "protocol": protocol, "guidelines": guidelines, "overlap": overlap,
            "blind": blind, "labels": labels, "check_fraction": check, "items": items}
    return AdminView(form, create_btn, status, campaign, show, line, tables)


def layout(ctx: AppContext, names: AnnotatorName | None = None) -> Layout:
    with gr.Tabs(elem_id="campaign-tabs"):
        with gr.Tab("Judge", elem_id="campaign-judge-tab"):
            judge = judge_layout(ctx, names)
        with gr.Tab("Set up and results", elem_id="campaign-admin-tab"):
            admin = admin_layout()
    return Layout(judge, admin)


# ---------------------------------------------------------------------------------------------------------------
# Wiring


def wire(ctx: AppContext, v: Layout, store: AnnotationStore) -> None:
    settings, j, a = ctx.settings, v.judge, v.admin
    priv = {"api_visibility": "private"}

    def shown(out: Judging) -> dict:
        return {j.screen: screen_html(out.screen), j.guidelines: out.guidelines}

    def campaign_refresh():
        choices = campaign_choices(store)
        return {j.campaign: gr.Dropdown(choices=choices), a.campaign: gr.Dropdown(choices=choices)}

    def campaign_open(campaign_id, name, request: gr.Request = None):
        return shown(judge_open(store, identify(request, settings), campaign_id, name))

    def campaign_act(campaign_id, name, action, request: gr.Request = None):
        return shown(judge_act(store, identify(request, settings), campaign_id, name, action))

    def campaign_create(*values, request: gr.Request = None):
        out = create(store, identify(request, settings), CampaignForm(**dict(zip(a.form, values))))
        return {a.status: status_html(out.message, out.kind), j.campaign: gr.Dropdown(choices=list(out.choices)),
                a.campaign: gr.Dropdown(choices=list(out.choices), value=out.campaign_id or None)}

    def campaign_results(campaign_id, request: gr.Request = None):
        r = show_results(store, identify(request, settings), campaign_id)
        return {a.line: status_html(r.message, r.kind), **{t: getattr(r, k) for k, t in a.tables.items()}}

    gr.on(None, campaign_refresh, None, [j.campaign, a.campaign], **priv)     # on page load
    j.refresh.click(campaign_refresh, None, [j.campaign, a.campaign], **priv)
    gr.on([j.campaign.input, j.name.submit], campaign_open, [j.campaign, j.name],
          [j.screen, j.guidelines], **priv)
    j.screen.act(campaign_act, [j.campaign, j.name, j.action], [j.screen, j.guidelines],
                 js=span_js(ctx, "campaign_collect"), **priv)
    a.create.click(campaign_create, list(a.form.values()), [a.status, j.campaign, a.campaign], **priv)
    a.show.click(campaign_results, a.campaign, [a.line, *a.tables.values()], **priv)


def build(ctx: AppContext, store: AnnotationStore, names: AnnotatorName | None = None) -> Layout:
    """The Campaigns tab (call inside a `gr.Tab`)."""
    v = layout(ctx, names)
    wire(ctx, v, store)
    return v
