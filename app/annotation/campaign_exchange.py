"""A campaign's judgements as a file (JSONL or CSV), and back into another store.

One row per judgement and output shown, in item order, then annotator, then slot:

    campaign, campaign_name, task, protocol, item, check, source, reference, slot, system, output, annotator,
    judgement, scores, comment, seconds, created_at, updated_at

`judgement` is the protocol's fields for that output (pairwise: the whole judgement, in slots), `scores` that
output's scores ({"esa": 73}), `seconds` the time spent on the item. An admin's export has every annotator's rows
with the systems; an annotator's has their own rows only, without `check`, and without `system` when the campaign
is blind (the slot says which output a row is). `import_campaign_export` takes an admin's export into a store that
does not have the campaign yet, so that export → import → export gives the same file.
"""
from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .campaign_items import CHECK_KINDS, CampaignItem
from .campaigns import Campaign, CampaignSpec, check_spec, get_campaign, insert_campaign, insert_items, judged, \
    shown
from .protocols import SLOTS, protocol_named, public
from .rights import Identity, require_admin, require_save
from .exchange import csv_guard, csv_unguard, decode_utf8, jsonl_rows, write_jsonl
from .store import AnnotationStore, load_error_categories

COLUMNS = ("campaign", "campaign_name", "task", "protocol", "item", "check", "source", "reference", "slot",
           "system", "output", "annotator", "judgement", "scores", "comment", "seconds", "created_at", "updated_at")
JSON_COLUMNS = ("judgement", "scores")
FORMATS = ("jsonl", "csv")


def export_format(path: Path) -> str:
    fmt = {"json": "jsonl", "ndjson": "jsonl"}.get(path.suffix.lower().lstrip("."), path.suffix.lower().lstrip("."))
    if fmt not in FORMATS:
        raise ValueError(f"a campaign exports as .jsonl or .csv, not {path.name}")
    return fmt


def export_rows(store: AnnotationStore, camp: Campaign, ident: Identity) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows an identity may export, and their columns: admins (and open use) everything; an annotator their
    own rows, blinded."""
    everyone = ident.sees_all
    if not everyone:
        require_save(ident)
    columns = [c for c in COLUMNS if everyone or (c != "check" and not (c == "system" and camp.blind))]
    proto = protocol_named(camp.protocol)
    times = {(r["item_id"], r["annotator"]): r for r in store.read(
        "SELECT item_id, annotator, comment, created_at, updated_at FROM campaign_judgements WHERE campaign_id=?",
        (camp.id,))}
    rows = []
    for j in judged(store, camp):
        if not everyone and j.annotator != ident.user:
            continue
        slotted = public(proto.by_slot(j.judgement, j.order))
        t = times[j.item.item_id, j.annotator]
        for slot, system in zip(SLOTS, j.order):
            fields = slotted if proto.compares else slotted["outputs"][slot]
            row = {"campaign": camp.id, "campaign_name": camp.name, "task": camp.task, "protocol": camp.protocol,
                   "item": j.item.item_id if everyone else j.item.public_id, "check": j.item.check_kind,
                   "source": j.item.source,
                   "reference": j.item.reference, "slot": slot, "system": system, "output": j.item.outputs[system],
                   "annotator": j.annotator, "judgement": fields, "scores": j.scores[system], "comment": t["comment"],
                   "seconds": j.seconds, "created_at": t["created_at"], "updated_at": t["updated_at"]}
            rows.append({c: row[c] for c in columns})
    return rows, columns


def export_campaign(store: AnnotationStore, campaign_id: str, ident: Identity, path: str | Path) -> Path:
    """Write the campaign's judgements that `ident` may see to `path` (.jsonl or .csv); returns the path."""
    path = Path(path)
    fmt = export_format(path)
    rows, columns = export_rows(store, get_campaign(store, campaign_id), ident)
    if fmt == "jsonl":
        return write_jsonl(rows, path)
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        out = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        out.writerow(columns)
        for row in rows:
            out.writerow([_cell(c, row[c]) for c in columns])
    return path


def _cell(column: str, value: Any) -> str:
    if column in JSON_COLUMNS:
        return json.dumps(value, ensure_ascii=False)
    if column == "seconds":
        return repr(float(value))
    return csv_guard(str(value))


# ---------------------------------------------------------------------------------------------------------------
# Import


def read_export(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """The rows of an admin's export as (where, row) with JSON and numbers read; ValueError naming the line."""
    path = Path(path)
    fmt = export_format(path)
    text = decode_utf8(path.read_bytes(), path.name)
    rows = list(jsonl_rows(text, path.name) if fmt == "jsonl" else _csv(text, path.name))
    if not rows:
        raise ValueError(f"{path.name} has no judgements in it")
    for where, row in rows:
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{where}: missing column(s) {', '.join(missing)}: import an admin's export of a "
                             "campaign (an annotator's export has no systems)")
    return rows


def _csv(text: str, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for n, raw in enumerate(reader, start=1):
        where = f"{name} row {n}"
        row = {k: csv_unguard(v) if k not in JSON_COLUMNS and k != "seconds" else v for k, v in raw.items()}
        try:
            row.update({c: json.loads(row[c]) for c in JSON_COLUMNS if c in row})
            row["seconds"] = float(row["seconds"]) if "seconds" in row else None
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: a judgement, scores or seconds cell cannot be read ({e})") from None
        yield where, row


def import_campaign_export(store: AnnotationStore, path: str | Path, ident: Identity) -> dict[str, Any]:
    """Recreate a campaign from an admin's export in a store that does not have it: its items (those judged),
    assignments and judgements, each judgement checked again by its protocol. All or nothing; admins only."""
    require_admin(ident, "Importing a campaign")
    rows = read_export(path)
    first = rows[0][1]
    if len({r["campaign"] for _, r in rows}) != 1:
        raise ValueError(f"{Path(path).name} holds several campaigns: import one campaign's export at a time")
    if store.read("SELECT 1 FROM campaigns WHERE id=?", (first["campaign"],)):
        raise ValueError(f"campaign {first['campaign']} is already in this store: nothing was imported")
    groups = _groups(rows)
    camp = _campaign(first, rows, groups, ident)
    items = _items(rows, camp.systems)
    with store.transaction() as conn:
        insert_campaign(conn, camp)
        insert_items(conn, camp.id, list(items.values()))
        for (item_id, who), group in groups.items():
            _insert_judgement(conn, camp, items[item_id], who, group)
    return {"id": camp.id, "items": len(items), "judgements": len(groups),
            "message": f"Imported campaign {camp.name!r}: {len(items)} items, {len(groups)} judgements."}


def _groups(rows: Sequence[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], list[tuple[str, dict]]]:
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for where, row in rows:
        groups.setdefault((str(row["item"]), str(row["annotator"])), []).append((where, row))
    return {k: sorted(g, key=lambda wr: wr[1]["slot"]) for k, g in groups.items()}


def _campaign(first: dict[str, Any], rows: Sequence, groups: dict, ident: Identity) -> Campaign:
    per_item: dict[str, int] = {}
    for item_id, _ in groups:
        per_item[item_id] = per_item.get(item_id, 0) + 1
    systems = tuple(dict.fromkeys(str(r["system"]) for _, r in rows))
    spec = CampaignSpec(str(first["campaign_name"]), str(first["task"]), str(first["protocol"]),
                        overlap=max(per_item.values()))
    proto = check_spec(spec)
    labels = tuple(sorted({str(r["judgement"].get("label")) for _, r in rows
                           if isinstance(r["judgement"], dict) and "label" in r["judgement"]}))
    labels += tuple(sorted({str(e.get("label")) for _, r in rows if isinstance(r["judgement"], dict)
                            for e in r["judgement"].get("entities", []) if isinstance(e, dict)} - set(labels)))
    return Campaign(str(first["campaign"]), spec.name, spec.task, proto.id, "",
                    tuple(vars(c) for c in load_error_categories(spec.task)), spec.overlap,
                    proto.compares or len(systems) > 1, labels, systems, 0.0, "import", ident.user,
                    str(first["created_at"]))


def _items(rows: Sequence[tuple[str, dict[str, Any]]], systems: Sequence[str]) -> dict[str, CampaignItem]:
    outputs: dict[str, dict[str, str]] = {}
    firsts: dict[str, dict[str, Any]] = {}
    for where, row in rows:
        item_id = str(row["item"])
        firsts.setdefault(item_id, row)
        if row["check"] not in CHECK_KINDS:
            raise ValueError(f"{where}: `check` must be one of {', '.join(map(repr, CHECK_KINDS))}")
        if outputs.setdefault(item_id, {}).get(row["system"], row["output"]) != row["output"]:
            raise ValueError(f"{where}: a second, different output of {row['system']!r} for item {item_id}")
        outputs[item_id][row["system"]] = row["output"]
    return {i: CampaignItem(i, str(r["source"]), {s: outputs[i][s] for s in systems if s in outputs[i]},
                            str(r["reference"]), {}, str(r["check"]), None) for i, r in firsts.items()}


def _insert_judgement(conn: Any, camp: Campaign, item: CampaignItem, who: str, group: list) -> None:
    proto = protocol_named(camp.protocol)
    where, row = group[0]
    order = [r["system"] for _, r in group]
    given = row["judgement"] if proto.compares else {"outputs": {r["slot"]: r["judgement"] for _, r in group}}
    try:
        normal = proto.check(given, shown(item, order), camp)
    except ValueError as e:
        raise ValueError(f"{where}: {e}; nothing was imported") from None
    scores = proto.scores(proto.by_system(normal, order))
    conn.execute("INSERT INTO campaign_assignments (campaign_id, item_id, annotator, shown_order, assigned_at, "
                 "submitted_at, seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (camp.id, item.item_id, who, json.dumps(order, ensure_ascii=False), row["created_at"],
                  row["updated_at"], row["seconds"]))
    conn.execute("INSERT INTO campaign_judgements (id, campaign_id, item_id, annotator, protocol, scores, judgement, "
                 "comment, seconds, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (uuid.uuid4().hex, camp.id, item.item_id, who, camp.protocol, json.dumps(scores, ensure_ascii=False),
                  json.dumps(public(normal), ensure_ascii=False), str(row["comment"]), float(row["seconds"]),
                  row["created_at"], row["updated_at"]))
