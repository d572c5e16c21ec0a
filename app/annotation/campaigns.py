"""Evaluation campaigns: an admin's set of items judged by several annotators under one protocol, each item by
exactly `overlap` different annotators, each annotator with their own queue.

The interface the judging page and the API use (`ident`: app.annotation.rights.Identity; the annotator is the
signed-in account — in open use, where nobody signs in, the page puts the typed name in `ident.user`)::

    spec = CampaignSpec(name="WMT-style de→en", task="summarization", protocol="esa", guidelines="# How to judge…",
                        overlap=2, blind=None, labels=(), check_fraction=0.1)
    create_campaign(store, spec, "items.jsonl", ident=admin)      # or job_id= a batch or compare job of the app
        -> {"id", "items", "checks", "systems", "blind", "message"}
    next_item(store, campaign_id, ident)        -> {"done": False, "item_id", "source", "outputs": [{"slot": "A",
                                                    "text"}, …], "reference"?, "protocol", "categories", "labels",
                                                    "guidelines", "progress": {"done", "total"}}  or {"done": True, …}
    get_item(store, campaign_id, item_id, ident) -> the same, plus "judgement" (theirs, or None), "comment"
    submit(store, campaign_id, item_id, {"score": 73, "spans": [...], "comment": "…"}, seconds, ident)
        -> {"id", "message"}; ValueError "Not saved: …"
    skip(store, campaign_id, item_id, "not my language", ident)
    assignments(store, campaign_id, ident)      # admin: who has what
    results(store, campaign_id, ident)          # admin: scores, win rates, agreement, per annotator
    export_campaign(store, campaign_id, ident, "out.jsonl")   # app.annotation.campaign_exchange

Assignment is dynamic: `next_item` gives an annotator the item they have not had with the fewest assignments
still below `overlap` (skipped ones do not count), inside one write transaction, so `overlap` is never exceeded
when annotators press at once or two app instances share a PostgreSQL store. An item assigned and not yet
submitted comes back until it is submitted or skipped. Each assignment records the order its outputs were shown
in (random per item and annotator); in a blind campaign an annotator sees slots ("A", "B"), never system names.
A degraded copy (attention check) goes only to annotators who judged its original. Progress is the annotator's
own: "done" their submitted judgements, "total" done + assigned + still open to them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import metrics
from . import campaign_stats as st
from .campaign_items import CampaignItem, degraded_copies, load_items
from .campaign_jobs import job_items
from .job_metrics import guess_language
from .protocols import SLOTS, EvalProtocol, Shown, protocol_named, public
from .rights import Identity, Refused, require_admin, require_save
from .store import MAX_COMMENT_BYTES, MAX_SHORT_CHARS, AnnotationStore, categories_by_task, load_error_categories, \
    utc_now

MAX_GUIDELINES_BYTES = 256 * 1024
MAX_CHECK_FRACTION = 0.5
RESERVED_SYSTEM_NAMES = {"tie", "both_bad", "input", "output"}   # preferences and span sides


@dataclass(frozen=True)
class CampaignSpec:
    """What an admin decides. `blind` None: blind when the protocol compares systems or the items have several;
    `labels`: the choices of "label" and "relabel"; `check_fraction`: the share of items that also get a degraded
    copy as an attention check (0–0.5); `seed` makes the copies reproducible; `batch_size` 0 assigns items one at a
    time (dynamic: the open item with the fewest judgements), n > 0 in fixed batches of n consecutive items (an
    annotator takes a whole batch, as in Appraise), the overlap holding per item either way."""
    name: str
    task: str
    protocol: str
    guidelines: str = ""
    overlap: int = 1
    blind: bool | None = None
    labels: tuple[str, ...] = ()
    check_fraction: float = 0.0
    seed: int | None = None
    batch_size: int = 0


@dataclass(frozen=True)
class Campaign:
    id: str
    name: str
    task: str
    protocol: str
    guidelines: str
    categories: tuple[dict[str, str], ...]     # the task's error categories: {id, label, help}
    overlap: int
    blind: bool
    labels: tuple[str, ...]
    systems: tuple[str, ...]
    check_fraction: float
    source: str                                 # the file's name or "batch job <id>"
    created_by: str
    created_at: str
    batch_size: int = 0                         # 0: items one at a time; n: fixed batches of n items


# ---------------------------------------------------------------------------------------------------------------
# Creating a campaign


def check_spec(spec: CampaignSpec) -> EvalProtocol:
    """The spec's protocol, or ValueError saying which field is wrong and what to give."""
    if not isinstance(spec.name, str) or not spec.name.strip() or len(spec.name) > MAX_SHORT_CHARS:
        raise ValueError(f"give the campaign a name (1–{MAX_SHORT_CHARS} characters)")
    if spec.task not in categories_by_task():
        raise ValueError(f"unknown task {spec.task!r}: use one of {', '.join(categories_by_task())}")
    proto = protocol_named(spec.protocol)
    if isinstance(spec.overlap, bool) or not isinstance(spec.overlap, int) or spec.overlap < 1:
        raise ValueError(f"overlap must be a whole number of at least 1 (how many different annotators judge each "
                         f"item), got {spec.overlap!r}")
    if proto.needs_labels and not spec.labels:
        raise ValueError(f"the {proto.id} protocol picks from the campaign's labels: give them (e.g. positive, "
                         "negative)")
    if any(not isinstance(x, str) or not x.strip() for x in spec.labels) or len(set(spec.labels)) != len(spec.labels):
        raise ValueError(f"labels must be distinct, non-empty texts, got {list(spec.labels)!r}")
    fraction = spec.check_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
            not 0 <= fraction <= MAX_CHECK_FRACTION:
        raise ValueError(f"check_fraction must be a number from 0 to {MAX_CHECK_FRACTION} (the share of items that "
                         f"get a degraded copy as an attention check), got {fraction!r}")
    if isinstance(spec.batch_size, bool) or not isinstance(spec.batch_size, int) or spec.batch_size < 0:
        raise ValueError(f"batch_size must be a whole number: 0 assigns items one at a time, n > 0 in fixed batches "
                         f"of n items, got {spec.batch_size!r}")
    if not isinstance(spec.guidelines, str) or len(spec.guidelines.encode("utf-8")) > MAX_GUIDELINES_BYTES:
        raise ValueError(f"guidelines must be Markdown text of at most {MAX_GUIDELINES_BYTES // 1024} KB")
    return proto


def create_campaign(store: AnnotationStore, spec: CampaignSpec, items_path: str | Path | None = None, *,
                    ident: Identity, job_id: str | None = None) -> dict[str, Any]:
    """Store a campaign and its items (from a plain-records file, or a batch / compare job of this store), with
    degraded copies for a `check_fraction` of the items. Admins only on a protected deployment. All or nothing:
    ValueError saying what was wrong, nothing stored."""
    require_admin(ident, "Creating a campaign")
    proto = check_spec(spec)
    items, source = _source_items(store, items_path, job_id)
    systems = tuple(dict.fromkeys(s for it in items for s in it.outputs))
    reserved = sorted(set(systems) & RESERVED_SYSTEM_NAMES)
    if reserved:
        raise ValueError(f"a system may not be called {', '.join(map(repr, reserved))} (a word judgements use): "
                         "rename it in the file")
    if proto.compares and len(systems) != 2:
        raise ValueError(f"pairwise preference compares two systems; the items have {len(systems)} "
                         f"({', '.join(systems)}): make one campaign per pair")
    checks = degraded_copies(items, float(spec.check_fraction), random.Random(spec.seed),
                             one_side=proto.compares) if proto.degradable else []
    blind = spec.blind if spec.blind is not None else (proto.compares or len(systems) > 1)
    camp = Campaign(uuid.uuid4().hex, spec.name.strip(), spec.task, proto.id, spec.guidelines,
                    tuple(dataclasses.asdict(c) for c in load_error_categories(spec.task)), spec.overlap,
                    bool(blind), tuple(spec.labels), systems, float(spec.check_fraction), source, ident.user,
                    utc_now(), spec.batch_size)
    with store.transaction() as conn:
        insert_campaign(conn, camp)
        insert_items(conn, camp.id, [*items, *checks])
    return {"id": camp.id, "items": len(items), "checks": len(checks), "systems": list(systems),
            "blind": camp.blind, "message": f"Created campaign {camp.name!r}: {len(items)} items, {len(systems)} "
                                            f"system(s), {len(checks)} attention check(s), overlap {camp.overlap}."}


def _source_items(store: AnnotationStore, path: str | Path | None, job_id: str | None) -> tuple[list[CampaignItem],
                                                                                               str]:
    if (path is None) == (not job_id):
        raise ValueError("give the items: a file of plain records (CSV, JSONL or Parquet), or the id of one of "
                         "this app's batch or compare jobs — one of the two")
    if path is not None:
        items = load_items(path)
        return items, Path(path).name
    return job_items(store, job_id)


def insert_campaign(conn: Any, camp: Campaign) -> None:
    row = dataclasses.asdict(camp)
    for name in ("categories", "labels", "systems"):
        row[name] = json.dumps(list(row[name]), ensure_ascii=False)
    row["blind"] = int(camp.blind)
    conn.execute(f"INSERT INTO campaigns ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def insert_items(conn: Any, campaign_id: str, items: Sequence[CampaignItem], start: int = 0) -> None:
    conn.executemany(
        "INSERT INTO campaign_items (campaign_id, item_id, idx, source, reference, outputs, metadata, check_kind, "
        "expected, public_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(campaign_id, it.item_id, start + i, it.source, it.reference, _json(it.outputs), _json(it.metadata),
          it.check_kind, _json(it.expected), it.public_id or uuid.uuid4().hex[:16]) for i, it in enumerate(items)])


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


# ---------------------------------------------------------------------------------------------------------------
# Reading


def get_campaign(store: AnnotationStore, campaign_id: str) -> Campaign:
    """The campaign; ValueError when there is none with this id."""
    rows = store.read("SELECT * FROM campaigns WHERE id=?", (str(campaign_id),))
    if not rows:
        raise ValueError(f"no campaign with id {campaign_id!r}: ask its admin for the campaign's id")
    r = rows[0]
    return Campaign(r["id"], r["name"], r["task"], r["protocol"], r["guidelines"], tuple(json.loads(r["categories"])),
                    r["overlap"], bool(r["blind"]), tuple(json.loads(r["labels"])), tuple(json.loads(r["systems"])),
                    r["check_fraction"], r["source"], r["created_by"], r["created_at"], r["batch_size"])


def list_campaigns(store: AnnotationStore) -> list[Campaign]:
    return [get_campaign(store, r[0]) for r in store.read("SELECT id FROM campaigns ORDER BY created_at DESC, id")]


def item_from_row(r: Any) -> CampaignItem:
    return CampaignItem(r["item_id"], r["source"], json.loads(r["outputs"]), r["reference"], json.loads(r["metadata"]),
                        r["check_kind"], json.loads(r["expected"]), r["public_id"])


def internal_id(store: AnnotationStore, camp: Campaign, public_id: Any) -> str:
    """The item behind the id an annotator was shown (their answers carry public ids only: the file's ids, and
    the attention checks' made-up ones, are never shown); an unknown id gives one no item has."""
    rows = store.read("SELECT item_id FROM campaign_items WHERE campaign_id=? AND public_id=?",
                      (camp.id, str(public_id)))
    return rows[0][0] if rows else "\x00unknown"



def _item(store: AnnotationStore, campaign_id: str, item_id: str) -> CampaignItem | None:
    rows = store.read("SELECT * FROM campaign_items WHERE campaign_id=? AND item_id=?", (campaign_id, item_id))
    return item_from_row(rows[0]) if rows else None


def shown(item: CampaignItem, order: Sequence[str]) -> Shown:
    """The item as shown with `order` (systems in slot order)."""
    return Shown(item.source, {slot: item.outputs[s] for slot, s in zip(SLOTS, order)}, item.reference)


def annotator_of(ident: Identity) -> str:
    """Who is judging: the signed-in account (the typed name in open use). Refused when nobody is named."""
    require_save(ident)
    if not ident.user.strip():
        raise Refused("Say who you are: sign in, or on an open deployment give your annotator name, so that your "
                      "queue and judgements are yours.")
    return ident.user.strip()


# ---------------------------------------------------------------------------------------------------------------
# The queue


def next_item(store: AnnotationStore, campaign_id: str, ident: Identity) -> dict[str, Any]:
    """This annotator's next item (the one assigned and not yet submitted, else a new one), or {"done": True}."""
    who = annotator_of(ident)
    camp = get_campaign(store, campaign_id)
    # Reads inside the transaction use its connection (store.read), so the choice and the insert are one step.
    with store.transaction() as conn:
        rows = store.read("SELECT a.item_id, a.shown_order FROM campaign_assignments a JOIN campaign_items i ON "
                          "i.campaign_id = a.campaign_id AND i.item_id = a.item_id WHERE a.campaign_id=? AND "
                          "a.annotator=? AND a.submitted_at IS NULL AND a.skipped='' ORDER BY a.assigned_at, i.idx",
                          (camp.id, who))
        if rows:
            item_id, order = rows[0]["item_id"], json.loads(rows[0]["shown_order"])
        else:
            item_id, order = _assign(store, conn, camp, who)
        item = _item(store, camp.id, item_id) if item_id is not None else None
        progress = _progress(store, camp, who)
    if item is None:
        return {**_frame(camp), "done": True, "progress": progress,
                "message": f"Done: you have judged every item open to you ({progress['done']})."}
    return view(camp, item, order, progress)


def _mine(store: AnnotationStore, camp: Campaign, who: str) -> dict[str, tuple[str | None, str]]:
    """This annotator's assignments: item -> (submitted_at, skipped reason)."""
    rows = store.read("SELECT item_id, submitted_at, skipped FROM campaign_assignments WHERE campaign_id=? AND "
                      "annotator=?", (camp.id, who))
    return {r["item_id"]: (r["submitted_at"], r["skipped"]) for r in rows}


def _open_items(store: AnnotationStore, camp: Campaign, who: str, *,
                waiting: bool = False) -> list[tuple[int, str, str]]:
    """(assignments, tie-break, item) of the items open to `who`: not had by them, below the overlap; a degraded
    copy once they submitted its original (`waiting`: once it is assigned to them, for the progress count)."""
    mine = _mine(store, camp, who)
    rows = store.read(
        "SELECT i.item_id, i.check_kind, i.expected, (SELECT COUNT(*) FROM campaign_assignments a WHERE "
        "a.campaign_id = i.campaign_id AND a.item_id = i.item_id AND a.skipped = '') AS taken FROM campaign_items i "
        "WHERE i.campaign_id=?", (camp.id,))
    out = []
    for r in rows:
        if r["item_id"] in mine or r["taken"] >= camp.overlap:
            continue
        if r["check_kind"] == "degraded":
            had = mine.get(json.loads(r["expected"])["of"])
            if had is None or had[1] or (had[0] is None and not waiting):
                continue
        tie = hashlib.sha256(f"{who}\x00{r['item_id']}".encode()).hexdigest()   # each annotator's own order
        out.append((r["taken"], tie, r["item_id"]))
    return out


def _assign(store: AnnotationStore, conn: Any, camp: Campaign, who: str) -> tuple[str | None, list[str]]:
    """Assign `who` the open item with the fewest assignments — with fixed batches, every open item of its batch
    — inside `conn`'s write transaction; returns the first one and its order, (None, []) when none is open."""
    candidates = _open_items(store, camp, who)
    if not candidates:
        return None, []
    best = min(candidates)[2]
    chosen = _batch_of(store, camp, best, {c[2] for c in candidates}) if camp.batch_size else [best]
    now, orders = utc_now(), {}
    for item_id in chosen:
        item = _item(store, camp.id, item_id)
        orders[item_id] = random.SystemRandom().sample(list(item.outputs), len(item.outputs))
        conn.execute("INSERT INTO campaign_assignments (campaign_id, item_id, annotator, shown_order, assigned_at) "
                     "VALUES (?, ?, ?, ?, ?)", (camp.id, item_id, who, json.dumps(orders[item_id], ensure_ascii=False),
                                               now))
    return chosen[0], orders[chosen[0]]


def _batch_of(store: AnnotationStore, camp: Campaign, item_id: str, open_ids: set[str]) -> list[str]:
    """Fixed batches: the items open to this annotator in `item_id`'s batch (file positions idx // batch_size),
    in file order. An attention-check copy, which comes only after its original, goes alone."""
    rows = store.read("SELECT item_id, idx, check_kind FROM campaign_items WHERE campaign_id=? ORDER BY idx",
                      (camp.id,))
    of = {r["item_id"]: r for r in rows}
    if of[item_id]["check_kind"] == "degraded":
        return [item_id]
    batch = of[item_id]["idx"] // camp.batch_size
    return [r["item_id"] for r in rows if r["check_kind"] != "degraded" and r["item_id"] in open_ids
            and r["idx"] // camp.batch_size == batch]


def _progress(store: AnnotationStore, camp: Campaign, who: str) -> dict[str, int]:
    mine = _mine(store, camp, who).values()
    done = sum(1 for submitted, skipped in mine if submitted is not None and not skipped)
    pending = sum(1 for submitted, skipped in mine if submitted is None and not skipped)
    return {"done": done, "total": done + pending + len(_open_items(store, camp, who, waiting=True))}


def _frame(camp: Campaign) -> dict[str, Any]:
    """What every answer to an annotator carries about the campaign (never its systems)."""
    return {"campaign_id": camp.id, "campaign": camp.name, "task": camp.task, "protocol": camp.protocol,
            "categories": [dict(c) for c in camp.categories], "labels": list(camp.labels),
            "guidelines": camp.guidelines}


def view(camp: Campaign, item: CampaignItem, order: Sequence[str], progress: Mapping[str, int]) -> dict[str, Any]:
    """An item as this annotator sees it: outputs by slot in their recorded order, system names only when the
    campaign is not blind; nothing says whether it is an attention check."""
    outputs = []
    for slot, system in zip(SLOTS, order):
        outputs.append({"slot": slot, "text": item.outputs[system]} | ({} if camp.blind else {"system": system}))
    out = {**_frame(camp), "done": False, "item_id": item.public_id, "source": item.source, "outputs": outputs,
           "progress": dict(progress)}
    if item.reference:
        out["reference"] = item.reference
    return out


def my_items(store: AnnotationStore, campaign_id: str, ident: Identity) -> list[str]:
    """This annotator's items in the order they were assigned (skipped ones left out): the judging page's back
    and forward."""
    who = annotator_of(ident)
    camp = get_campaign(store, campaign_id)
    return [r["public_id"] for r in store.read(
        "SELECT i.public_id FROM campaign_assignments a JOIN campaign_items i ON i.campaign_id = a.campaign_id AND "
        "i.item_id = a.item_id WHERE a.campaign_id=? AND a.annotator=? AND a.skipped='' ORDER BY a.assigned_at, "
        "a.item_id", (camp.id, who))]


def get_item(store: AnnotationStore, campaign_id: str, item_id: str, ident: Identity) -> dict[str, Any]:
    """An item assigned to this annotator, with their judgement so far (None before they submit), to go back or
    edit. ValueError for an item that is not theirs."""
    who = annotator_of(ident)
    camp = get_campaign(store, campaign_id)
    rows = store.read("SELECT a.shown_order, a.skipped, a.seconds, j.judgement, j.comment FROM campaign_assignments a "
                      "LEFT JOIN campaign_judgements j ON j.campaign_id = a.campaign_id AND j.item_id = a.item_id AND "
                      "j.annotator = a.annotator WHERE a.campaign_id=? AND a.item_id=? AND a.annotator=?",
                      (camp.id, internal_id(store, camp, item_id), who))
    if not rows:
        raise ValueError(f"item {item_id!r} is not assigned to you ({who}) in this campaign: take your next item "
                         "instead")
    r = rows[0]
    item = _item(store, camp.id, internal_id(store, camp, item_id))
    progress = _progress(store, camp, who)
    judgement = json.loads(r["judgement"]) if r["judgement"] is not None else None
    return {**view(camp, item, json.loads(r["shown_order"]), progress), "judgement": judgement,
            "comment": r["comment"] or "", "seconds": r["seconds"], "skipped": r["skipped"]}


# ---------------------------------------------------------------------------------------------------------------
# Judging


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"seconds must be the time spent on the item, a number ≥ 0, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be the time spent on the item, a number ≥ 0, not {value!r}")
    return seconds


def _judgement_input(judgement: Any) -> tuple[dict[str, Any], str]:
    """The judgement as an object (JSON text is read) and its comment, taken out of it."""
    if isinstance(judgement, str):
        try:
            judgement = json.loads(judgement)
        except (json.JSONDecodeError, RecursionError):
            raise ValueError("the judgement is not valid JSON: send an object such as {\"score\": 73}") from None
    if not isinstance(judgement, Mapping):
        raise ValueError("the judgement must be a JSON object such as {\"score\": 73}")
    judgement = dict(judgement)
    comment = judgement.pop("comment", "") or ""
    if not isinstance(comment, str) or len(comment.encode("utf-8")) > MAX_COMMENT_BYTES:
        raise ValueError(f"`comment` must be text of at most {MAX_COMMENT_BYTES // 1024} KB")
    return judgement, comment


def submit(store: AnnotationStore, campaign_id: str, item_id: str, judgement: Any, seconds: Any,
           ident: Identity) -> dict[str, Any]:
    """Save this annotator's judgement of an item assigned to them; a second submit edits it (the earlier state
    is kept as a version): one judgement per annotator and item, ever. `seconds`: the time spent, added to the
    item's total. Returns {"id", "message"}; ValueError "Not saved: …" saving nothing."""
    try:
        who = annotator_of(ident)
        camp = get_campaign(store, campaign_id)
        proto = protocol_named(camp.protocol)
        fields, comment = _judgement_input(judgement)
        spent = _seconds(seconds)
        with store.transaction() as conn:
            a = _assignment(store, camp, str(item_id), who)
            order = json.loads(a["shown_order"])
            item = _item(store, camp.id, a["item_id"])
            normal = proto.check(fields, shown(item, order), camp)
            scores = proto.scores(proto.by_system(normal, order))
            return _save_judgement(store, conn, camp, a, public(normal), scores, comment, spent, str(item_id))
    except ValueError as e:
        raise type(e)(str(e) if str(e).startswith("Not saved") else f"Not saved: {e}") from None


def _assignment(store: AnnotationStore, camp: Campaign, item_id: str, who: str) -> Any:
    """The assignment of the item shown to `who` as `item_id` (its public id)."""
    rows = store.read("SELECT * FROM campaign_assignments WHERE campaign_id=? AND item_id=? AND annotator=?",
                      (camp.id, internal_id(store, camp, item_id), who))
    if not rows:
        raise ValueError(f"item {item_id!r} is not assigned to you ({who}) in campaign {camp.name!r}: judge the "
                         "item your next item gives you")
    if rows[0]["skipped"]:
        raise ValueError(f"you skipped item {item_id!r} ({rows[0]['skipped']}); it may have gone to someone else")
    return rows[0]


def _save_judgement(store: AnnotationStore, conn: Any, camp: Campaign, a: Any, judgement: dict[str, Any],
                    scores: dict[str, Any], comment: str, spent: float, shown_id: str) -> dict[str, Any]:
    key = (camp.id, a["item_id"], a["annotator"])
    now, seconds = utc_now(), (a["seconds"] or 0.0) + spent
    old = store.read("SELECT * FROM campaign_judgements WHERE campaign_id=? AND item_id=? AND annotator=?", key)
    if old:
        version = _keep_version(store, conn, {k: old[0][k] for k in old[0].keys()}, a["annotator"])
        conn.execute("UPDATE campaign_judgements SET scores=?, judgement=?, comment=?, seconds=?, updated_at=? "
                     "WHERE id=?", (_json(scores), _json(judgement), comment, seconds, now, old[0]["id"]))
        jid, message = old[0]["id"], f"Saved your new judgement of item {shown_id} (the earlier one is " \
                                     f"kept as version {version})."
    else:
        jid, message = uuid.uuid4().hex, f"Saved your judgement of item {shown_id}."
        conn.execute("INSERT INTO campaign_judgements (id, campaign_id, item_id, annotator, protocol, scores, "
                     "judgement, comment, seconds, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (jid, *key, camp.protocol, _json(scores), _json(judgement), comment, seconds, now, now))
    conn.execute("UPDATE campaign_assignments SET submitted_at=?, seconds=? WHERE campaign_id=? AND item_id=? AND "
                 "annotator=?", (a["submitted_at"] or now, seconds, *key))
    return {"id": jid, "message": message}


def _keep_version(store: AnnotationStore, conn: Any, record: dict[str, Any], by: str) -> int:
    n = store.read("SELECT COALESCE(MAX(version), 0) FROM campaign_judgement_versions WHERE judgement_id=?",
                   (record["id"],))[0][0] + 1
    conn.execute("INSERT INTO campaign_judgement_versions (judgement_id, version, record, replaced_at, replaced_by) "
                 "VALUES (?, ?, ?, ?, ?)", (record["id"], n, _json(record), utc_now(), by))
    return n


def judgement_versions(store: AnnotationStore, judgement_id: str) -> list[dict[str, Any]]:
    """Earlier states of a judgement, oldest first: {version, record, replaced_at, replaced_by}."""
    return [{"version": r["version"], "record": json.loads(r["record"]), "replaced_at": r["replaced_at"],
             "replaced_by": r["replaced_by"]} for r in
            store.read("SELECT * FROM campaign_judgement_versions WHERE judgement_id=? ORDER BY version",
                       (judgement_id,))]


def skip(store: AnnotationStore, campaign_id: str, item_id: str, reason: str, ident: Identity) -> dict[str, Any]:
    """Skip an item assigned to this annotator, with a reason; it goes to another annotator and never comes back
    to this one. ValueError for an item not theirs, already judged, or no reason."""
    who = annotator_of(ident)
    camp = get_campaign(store, campaign_id)
    reason = str(reason or "").strip()
    if not reason or len(reason) > MAX_SHORT_CHARS:
        raise ValueError(f"Not skipped: say why (1–{MAX_SHORT_CHARS} characters), e.g. \"not my language\"")
    with store.transaction() as conn:
        try:
            a = _assignment(store, camp, str(item_id), who)
        except ValueError as e:
            raise ValueError(f"Not skipped: {e}") from None
        if a["submitted_at"] is not None:
            raise ValueError(f"Not skipped: you have judged item {item_id!r} already; change your judgement instead")
        conn.execute("UPDATE campaign_assignments SET skipped=? WHERE campaign_id=? AND item_id=? AND annotator=?",
                     (reason, camp.id, a["item_id"], who))
    return {"message": f"Skipped item {item_id}: {reason}."}


def assignments(store: AnnotationStore, campaign_id: str, ident: Identity) -> dict[str, Any]:
    """Who has what (admins): every assignment with the systems in the order shown, and a count per annotator."""
    require_admin(ident, "Seeing a campaign's assignments")
    camp = get_campaign(store, campaign_id)
    rows = [{"item_id": r["item_id"], "annotator": r["annotator"], "order": json.loads(r["shown_order"]),
             "assigned_at": r["assigned_at"], "submitted_at": r["submitted_at"], "seconds": r["seconds"],
             "skipped": r["skipped"]} for r in
            store.read("SELECT a.* FROM campaign_assignments a JOIN campaign_items i ON i.campaign_id = a.campaign_id "
                       "AND i.item_id = a.item_id WHERE a.campaign_id=? ORDER BY i.idx, a.annotator", (camp.id,))]
    per: dict[str, dict[str, int]] = {}
    for r in rows:
        state = "skipped" if r["skipped"] else "done" if r["submitted_at"] else "pending"
        per.setdefault(r["annotator"], {"done": 0, "pending": 0, "skipped": 0})[state] += 1
    return {"campaign_id": camp.id, "overlap": camp.overlap, "assignments": rows, "by_annotator": per}


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Judged:
    """One stored judgement as results read it: `judgement` by system, with the context `check` adds."""
    item: CampaignItem
    annotator: str
    order: list[str]
    judgement: dict[str, Any]
    scores: dict[str, dict[str, float]]
    seconds: float


def judged(store: AnnotationStore, camp: Campaign) -> list[Judged]:
    """Every judgement of the campaign, in item order then annotator."""
    proto = protocol_named(camp.protocol)
    rows = store.read("SELECT i.*, j.annotator, j.judgement, j.scores, j.seconds AS spent, a.shown_order "
                      "FROM campaign_judgements j JOIN campaign_items i ON i.campaign_id = j.campaign_id AND "
                      "i.item_id = j.item_id JOIN campaign_assignments a ON a.campaign_id = j.campaign_id AND "
                      "a.item_id = j.item_id AND a.annotator = j.annotator WHERE j.campaign_id=? "
                      "ORDER BY i.idx, j.annotator", (camp.id,))
    out = []
    for r in rows:
        item, order = item_from_row(r), json.loads(r["shown_order"])
        full = proto.check(json.loads(r["judgement"]), shown(item, order), camp)
        out.append(Judged(item, r["annotator"], order, proto.by_system(full, order), json.loads(r["scores"]),
                          r["spent"]))
    return out


def results(store: AnnotationStore, campaign_id: str, ident: Identity) -> dict[str, Any]:
    """The campaign's results (admins): per-system mean scores with bootstrap 95% intervals, win rates with
    Wilson intervals, Krippendorff's alpha, span agreement, and per annotator: items done, median seconds,
    attention-check pass rate, agreement with the others; with references, automatic metrics and their
    correlation with the human scores (`metric_results`). Attention checks stay out of the system scores."""
    require_admin(ident, "Reading a campaign's results")
    camp = get_campaign(store, campaign_id)
    proto = protocol_named(camp.protocol)
    rows = judged(store, camp)
    real = [j for j in rows if not j.item.check_kind]
    units, spans = _units(proto, real), _span_units(proto, real)
    metric = proto.metric
    scores = st.system_scores((j.item.item_id, s, name, v) for j in real for s, sc in j.scores.items()
                              for name, v in sc.items())
    return {"campaign_id": camp.id, "name": camp.name, "protocol": camp.protocol, "overlap": camp.overlap,
            "items": len({j.item.item_id for j in real}), "judgements": len(real),
            "systems": [dataclasses.asdict(s) for s in scores],
            "win_rates": [dataclasses.asdict(w) for w in st.win_rates(_outcomes(proto, real))],
            "agreement": [dataclasses.asdict(st.alpha(units, metric, camp.protocol))] if metric else [],
            "span_agreement": dataclasses.asdict(st.span_agreement(spans)) if spans else None,
            "annotators": _per_annotator(proto, rows, units, spans), **metric_results(real)}


METRICS = ("chrf", "bleu")


def metric_results(real: Sequence[Judged]) -> dict[str, list[dict]]:
    """For the items with a reference: each system's corpus chrF++ and BLEU with 95% bootstrap intervals
    ("metrics"), and their correlation with the human scores ("correlations": Pearson and Kendall's tau-b per
    human score and metric, at segment level over (item, system) and at system level; a human score's item value is
    its annotators' mean). Attention checks are left out by the caller."""
    items = {j.item.item_id: j.item for j in real if j.item.reference.strip()}
    if not items:
        return {"metrics": [], "correlations": []}
    lang = guess_language([it.reference for it in items.values()])
    table, segment, corpus = [], {}, {}
    for system in sorted({s for it in items.values() for s in it.outputs}):
        ids = [i for i, it in items.items() if system in it.outputs]
        hyps, refs = [items[i].outputs[system] for i in ids], [items[i].reference for i in ids]
        scores = metrics.corpus_scores(hyps, refs, lang, METRICS)
        corpus[system] = {key: c["score"] for key, c in scores.items()}
        table += [{"system": system, "metric": key, "score": round(c["score"], 2), "ci_low": round(c["low"], 2),
                   "ci_high": round(c["high"], 2), "items": c["n"]} for key, c in scores.items()]
        segment.update({(i, system): row for i, row in zip(ids, metrics.sentence_scores(hyps, refs, lang, METRICS))})
    human: dict[tuple[str, str, str], list[float]] = {}
    for j in real:
        for system, by_name in j.scores.items():
            for name, value in by_name.items():
                if (j.item.item_id, system) in segment:
                    human.setdefault((j.item.item_id, system, name), []).append(float(value))
    item_means = {key: sum(v) / len(v) for key, v in human.items()}
    segments = [(name, key, h, segment[i, s][key]) for (i, s, name), h in item_means.items()
                for key in METRICS if segment[i, s].get(key) is not None]
    per_system: dict[tuple[str, str], list[float]] = {}
    for (i, s, name), h in item_means.items():
        per_system.setdefault((s, name), []).append(h)
    systems = [(name, key, sum(v) / len(v), corpus[s][key]) for (s, name), v in per_system.items() for key in METRICS]
    return {"metrics": table, "correlations": [
        {**dataclasses.asdict(c), "pearson": None if c.pearson is None else round(c.pearson, 4),
         "kendall": None if c.kendall is None else round(c.kendall, 4)} for c in st.correlations(segments, systems)]}


def _units(proto: EvalProtocol, rows: Sequence[Judged]) -> dict[Any, dict[str, Any]]:
    """{unit: {annotator: value}} for alpha: an item (pairwise) or an (item, system) output."""
    units: dict[Any, dict[str, Any]] = {}
    for j in rows:
        if proto.compares:
            units.setdefault(j.item.item_id, {})[j.annotator] = proto.agreement_value(j.judgement)
            continue
        for system, part in j.judgement["outputs"].items():
            units.setdefault((j.item.item_id, system), {})[j.annotator] = proto.agreement_value(part)
    return units


def _span_units(proto: EvalProtocol, rows: Sequence[Judged]) -> dict[Any, dict[str, list]]:
    if not proto.has_spans and proto.id != "relabel":
        return {}
    units: dict[Any, dict[str, list]] = {}
    for j in rows:
        if proto.compares:
            units.setdefault(j.item.item_id, {})[j.annotator] = j.judgement["spans"]
            continue
        for system, part in j.judgement["outputs"].items():
            units.setdefault((j.item.item_id, system), {})[j.annotator] = proto.spans_of(part)
    return units


def _outcomes(proto: EvalProtocol, rows: Sequence[Judged]) -> list[tuple[str, str, str]]:
    """(system, other, result) per judgement and pair of systems: the preference, or the higher score."""
    out = []
    for j in rows:
        systems = list(j.item.outputs)
        if proto.compares:
            out.append((systems[0], systems[1], j.judgement["preference"]))
            continue
        for i, x in enumerate(systems):
            for y in systems[i + 1:]:
                sx, sy = (next(iter(j.scores[s].values())) for s in (x, y))
                better = sx > sy if proto.higher_is_better else sx < sy
                out.append((x, y, "tie" if sx == sy else x if better else y))
    return out


def _per_annotator(proto: EvalProtocol, rows: Sequence[Judged], units: Mapping, spans: Mapping) -> list[dict]:
    originals = {(j.item.item_id, j.annotator): j for j in rows if not j.item.check_kind}
    out = []
    for who in sorted({j.annotator for j in rows}):
        mine = [j for j in rows if j.annotator == who]
        checks = st.check_rate(_verdict(proto, j, originals) for j in mine if j.item.check_kind)
        agree = st.annotator_alpha(units, who, proto.metric) if proto.metric else None
        out.append({"annotator": who, "items_done": len(mine),
                    "median_seconds": st.median([j.seconds for j in mine]), "checks": checks.checks,
                    "checks_passed": checks.passed, "check_pass_rate": checks.rate, "agreement_alpha": agree,
                    "span_f1": st.span_agreement(spans, who).f1 if spans else None})
    return out


def _verdict(proto: EvalProtocol, j: Judged, originals: Mapping[tuple[str, str], Judged]) -> bool | None:
    """Whether an attention check passed; None when it cannot be told (e.g. a check imported without its key)."""
    expected = j.item.expected
    if not expected:
        return None
    if j.item.check_kind == "expected":
        return proto.matches(expected, j.judgement)
    original = originals.get((expected["of"], j.annotator))
    return proto.passes_degraded(original.judgement if original else None, j.judgement,
                                 {s: tuple(v) for s, v in expected["stretches"].items()})
