"""Error spans and the annotation protocols that use them (ESA, MQM): validation, the MQM score, UTF-16 offsets.

A span marks characters `start:end` (Python string indices, end exclusive) of one text of an annotation, named by
`side`: "output" (an error in the model's output) or "input" (something of the input the output left out). It has
a `category` (MQM: an id of the MQM typology; ESA: a task category id, or "" since ESA needs none) and a
`severity` (minor / major / critical). Spans are plain JSON objects so that they are stored, exported and
re-imported as they are::

    {"start": 0, "end": 5, "side": "output", "category": "accuracy", "severity": "major"}

A later side-by-side comparison names its texts "A" and "B": `check_spans` takes the texts by side, so the same
spans (side "A"/"B"/"input") and rules apply. The protocols, severities and MQM weights are in
`assets/annotation_protocols.json`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTOCOLS_PATH = REPO_ROOT / "assets" / "annotation_protocols.json"
SPAN_KEYS = ("start", "end", "side", "category", "severity")
NO_PROTOCOL = ""        # stored value for "categories only" (the protocol id "none" in the panel)
MAX_SPANS = 500


@dataclass(frozen=True)
class Choice:
    id: str
    label: str
    help: str = ""


@dataclass(frozen=True)
class Protocol:
    id: str
    label: str
    help: str = ""
    categories: tuple[Choice, ...] = ()          # MQM: its typology; empty: the task's categories (ESA)
    weights: Mapping[str, float] = field(default_factory=dict)                  # severity -> weight
    category_weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # category -> severity -> w
    score: Mapping[str, int] = field(default_factory=dict)                      # ESA: {"min": 0, "max": 100}


@dataclass(frozen=True)
class Protocols:
    default: str
    severities: tuple[Choice, ...]
    by_id: Mapping[str, Protocol]

    @property
    def severity_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.severities)

    def get(self, protocol_id: str) -> Protocol:
        key = protocol_id or "none"
        if key not in self.by_id:
            raise ValueError(f"unknown annotation protocol {protocol_id!r}: use one of "
                             f"{', '.join(p for p in self.by_id)} (assets/annotation_protocols.json)")
        return self.by_id[key]


def load_protocols(path: Path = PROTOCOLS_PATH) -> Protocols:
    """The protocols, severities and MQM weights of `assets/annotation_protocols.json`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    severities = tuple(Choice(s["id"], s.get("label", s["id"]), s.get("help", "")) for s in data["severities"])
    by_id = {}
    for p in data["protocols"]:
        cats = tuple(Choice(c["id"], c.get("label", c["id"]), c.get("help", "")) for c in p.get("categories", ()))
        by_id[p["id"]] = Protocol(p["id"], p.get("label", p["id"]), p.get("help", ""), cats,
                                  dict(p.get("weights", {})), {k: dict(v) for k, v in
                                                               p.get("category_weights", {}).items()},
                                  dict(p.get("score", {})))
    if data["default"] not in by_id:
        raise ValueError(f"{path}: default protocol {data['default']!r} is not one of {', '.join(by_id)}")
    return Protocols(data["default"], severities, by_id)


def stored_protocol(protocol_id: Any) -> str:
    """The protocol as stored: "esa", "mqm", or "" for categories only ("none", None and "" from the page)."""
    value = "" if protocol_id is None else str(protocol_id).strip().lower()
    return NO_PROTOCOL if value in ("", "none") else value


# ---------------------------------------------------------------------------------------------------------------
# Offsets: the browser counts UTF-16 code units, Python counts code points


def utf16_to_index(text: str, offset: int) -> int:
    """The Python index of `text` at UTF-16 offset `offset` (what JavaScript's string lengths and DOM ranges
    count: a character outside the Basic Multilingual Plane, such as most emoji, is 2 units there and 1 here).
    ValueError for an offset outside the text or inside a surrogate pair."""
    if offset < 0:
        raise ValueError(f"offset {offset} is negative")
    units = 0
    for i, ch in enumerate(text):
        if units == offset:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > offset:
            raise ValueError(f"UTF-16 offset {offset} falls inside the character {ch!r} at index {i}")
    if units == offset:
        return len(text)
    raise ValueError(f"UTF-16 offset {offset} is past the end of the text ({units} units)")


def index_to_utf16(text: str, index: int) -> int:
    """The UTF-16 offset of Python index `index` of `text` (the inverse of `utf16_to_index`)."""
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in text[:index])


def selected_span(text: str, start_utf16: int, end_utf16: int, selected: str) -> tuple[int, int]:
    """Python offsets of a mouse selection in `text` (the browser's UTF-16 offsets and the selected string),
    without the spaces at its ends (a double-click selects the space after a word too). ValueError, with the
    message to show after "Span not added: ", when it does not match the text or holds only spaces."""
    try:
        s, e = utf16_to_index(text, int(start_utf16)), utf16_to_index(text, int(end_utf16))
    except ValueError as err:
        raise ValueError(f"{err}; select the text again") from None
    if text[s:e] != selected:
        raise ValueError("the selection does not match the text shown (select it again inside the text box)")
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    if s == e:
        raise ValueError("only spaces are selected")
    return s, e


# ---------------------------------------------------------------------------------------------------------------
# Validation and scores


def parse_spans(value: Any) -> list[dict[str, Any]]:
    """Spans from the API or a file: a list of span objects, or its JSON text; None or "" is no spans."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except RecursionError:
            raise ValueError("spans must be a JSON list of {start, end, side, category, severity} objects: this "
                             "one is nested too deeply to read") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"spans must be a JSON list of {{start, end, side, category, severity}} objects: "
                             f"{e}") from None
    if not isinstance(value, list):
        raise ValueError(f"spans must be a list of {{start, end, side, category, severity}} objects, "
                         f"not {type(value).__name__}")
    return [dict(s) if isinstance(s, Mapping) else s for s in value]


def span_order(span: Mapping[str, Any]) -> tuple:
    """Spans are kept sorted by side, then position: the stored order does not depend on the order of clicks."""
    return (span["side"], span["start"], span["end"], span["category"], span["severity"])


def check_spans(spans: Any, texts: Mapping[str, str], protocol: str, categories: Sequence[str],
                protocols: Protocols) -> list[dict[str, Any]]:
    """Validate `spans` against the texts they mark (`texts`: side -> text) and return them normalised and
    sorted. `categories` are the ids allowed for the whole output (the task's); MQM spans use its typology
    instead. ValueError fit to show as-is, naming the span (1-based, in the order given)."""
    p = protocols.get(protocol)
    if not isinstance(spans, list):
        raise ValueError(f"spans must be a list of {{start, end, side, category, severity}} objects, got {spans!r}")
    if spans and p.id == "none":
        raise ValueError("spans need a protocol: choose ESA or MQM (or remove the spans)")
    if len(spans) > MAX_SPANS:
        raise ValueError(f"{len(spans)} spans is more than {MAX_SPANS} for one output")
    allowed = [c.id for c in p.categories] if p.categories else ["", *categories]
    out = []
    for n, s in enumerate(spans, start=1):
        where = f"span {n}"
        if not isinstance(s, Mapping):
            raise ValueError(f"{where}: expected an object {{start, end, side, category, severity}}, got {s!r}")
        keys = set(s)
        if keys != set(SPAN_KEYS):
            missing, extra = sorted(set(SPAN_KEYS) - keys), sorted(keys - set(SPAN_KEYS))
            raise ValueError(f"{where}: " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(extra)}"]
                                                                          if extra else [])))
        start, end, side, cat, sev = (s[k] for k in SPAN_KEYS)
        for name, v in (("start", start), ("end", end)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{where}: `{name}` must be a whole number (a character offset), got {v!r}")
        if side not in texts:
            raise ValueError(f"{where}: side {side!r} is not one of {', '.join(texts)}")
        length = len(texts[side])
        if not 0 <= start < end <= length:
            raise ValueError(f"{where}: characters {start}–{end} are outside the {side} ({length} characters): "
                             "a span needs 0 ≤ start < end ≤ the text's length")
        if sev not in protocols.severity_ids:
            raise ValueError(f"{where}: unknown severity {sev!r}: use one of {', '.join(protocols.severity_ids)}")
        if cat not in allowed:
            known = ", ".join(c or '"" (none)' for c in allowed)
            raise ValueError(f"{where}: category {cat!r} is not one of the {p.id.upper()} categories for this task: "
                             f"{known}")
        out.append({"start": start, "end": end, "side": side, "category": cat, "severity": sev, "_n": n})
    out.sort(key=span_order)
    for i, a in enumerate(out):
        for b in out[i + 1:]:
            if b["side"] != a["side"] or b["start"] >= a["end"]:
                break   # sorted by side and start: no later span overlaps `a` either
            if a["category"] == b["category"]:
                first, second = sorted((a["_n"], b["_n"]))
                text = texts[a["side"]]
                raise ValueError(f"span {second} overlaps span {first} ({text[a['start']:a['end']]!r} and "
                                 f"{text[b['start']:b['end']]!r} in the {a['side']}) with the same category "
                                 f"{a['category'] or '(none)'!r}: merge them into one span, or give one another "
                                 "category")
    return [{k: s[k] for k in SPAN_KEYS} for s in out]


def span_weight(span: Mapping[str, Any], protocol: Protocol) -> float:
    """One span's MQM penalty: the category's own weight for that severity if it has one, else the severity's."""
    own = protocol.category_weights.get(span["category"], {})
    return float(own.get(span["severity"], protocol.weights[span["severity"]]))


def mqm_score(spans: Sequence[Mapping[str, Any]], protocols: Protocols) -> float:
    """The MQM score of one output: the sum of its spans' weights (penalty points, 0 = no error), 6 decimals."""
    p = protocols.get("mqm")
    return round(sum(span_weight(s, p) for s in spans), 6)


def check_scores(protocol: str, spans: Sequence[Mapping[str, Any]], esa_score: Any, mqm: Any,
                 protocols: Protocols) -> None:
    """ESA: `esa_score` a whole number in the protocol's range, or None (not scored yet); MQM: `mqm`, when given,
    must be the score the spans give. Neither score belongs to another protocol."""
    if esa_score is not None:
        if protocol != "esa":
            raise ValueError(f"an ESA score was given but the protocol is {protocol or 'none'!r}: choose ESA")
        lo, hi = protocols.get("esa").score.get("min", 0), protocols.get("esa").score.get("max", 100)
        if isinstance(esa_score, bool) or not isinstance(esa_score, int) or not lo <= esa_score <= hi:
            raise ValueError(f"the ESA score must be a whole number from {lo} to {hi}, got {esa_score!r}")
    if mqm is not None:
        if protocol != "mqm":
            raise ValueError(f"an MQM score was given but the protocol is {protocol or 'none'!r}")
        expected = mqm_score(spans, protocols)
        if isinstance(mqm, bool) or not isinstance(mqm, (int, float)) or abs(mqm - expected) > 1e-9:
            raise ValueError(f"the MQM score {mqm!r} does not match the spans: they give {expected:g} with the "
                             "weights of assets/annotation_protocols.json")


def parse_score(value: Any, what: str = "score") -> int | float | None:
    """A score from a number box or the API: None or "" is "not given"; whole floats become ints."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"the {what} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the {what} must be a number, not {value!r}") from None
    return int(number) if number.is_integer() else number


# ---------------------------------------------------------------------------------------------------------------
# Display


def segments(text: str, spans: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[int]]]:
    """`text` cut at every span boundary: (piece, indices of the spans covering it), in order; pieces join to
    `text`. For highlighting (overlapping spans of different categories both cover their common part)."""
    cuts = sorted({0, len(text), *(s["start"] for s in spans), *(s["end"] for s in spans)})
    out = []
    for a, b in zip(cuts, cuts[1:]):
        if a < b:
            out.append((text[a:b], [i for i, s in enumerate(spans) if s["start"] <= a and b <= s["end"]]))
    return out


def describe(span: Mapping[str, Any], text: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One row of the span list: its text and fields, the category by its label."""
    cat = span["category"]
    return {"side": span["side"], "from": span["start"], "to": span["end"], "text": text[span["start"]:span["end"]],
            "category": (labels or {}).get(cat, cat) or "—", "severity": span["severity"]}


SEVERITY_RANK = {"minor": 0, "major": 1, "critical": 2}
# Translucent fills read on light and dark backgrounds; the underline style tells severities apart without colour.
_MARK_STYLE = {
    "minor": "background: rgba(234, 179, 8, 0.30); border-bottom: 2px dotted rgb(202, 138, 4);",
    "major": "background: rgba(249, 115, 22, 0.40); border-bottom: 2px solid rgb(234, 88, 12);",
    "critical": "background: rgba(220, 38, 38, 0.45); border-bottom: 3px double rgb(185, 28, 28);",
}


def render_html(text: str, spans: Sequence[Mapping[str, Any]], side: str, *, title: str = "", rtl: bool = False,
                labels: Mapping[str, str] | None = None, panel: str = "") -> str:
    """`text` as HTML with the spans of `side` highlighted (`<mark>`, the worst severity's colour where spans
    overlap, category and severity as a tooltip). The text is escaped and nothing else is put inside the
    `[data-span-side]` element, so a DOM range's length in it is a UTF-16 offset into `text` (what
    assets/span_track.js reads). `panel` names the panel the view belongs to (a page has one per task tab)."""
    import html

    mine = [s for s in spans if s["side"] == side]
    parts = []
    for piece, covering in segments(text, mine):
        escaped = html.escape(piece, quote=False)
        if not covering:
            parts.append(escaped)
            continue
        worst = max((mine[i]["severity"] for i in covering), key=lambda v: SEVERITY_RANK.get(v, 0))
        tip = "; ".join(f"{mine[i]['severity']}: {(labels or {}).get(mine[i]['category'], mine[i]['category']) or '—'}"
                        for i in covering)
        parts.append(f'<mark class="span-mark span-{worst}" title="{html.escape(tip)}" '
                     f'style="{_MARK_STYLE.get(worst, "")} color: inherit; padding: 0;">{escaped}</mark>')
    head = f'<div class="span-view-title" style="font-size: 0.85em; opacity: 0.8;">{html.escape(title)}</div>' \
        if title else ""
    direction = "rtl" if rtl else "auto"
    return (f'<div class="span-view">{head}<div class="span-text" data-span-side="{html.escape(side)}" '
            f'data-span-panel="{html.escape(panel)}" '
            f'dir="{direction}" style="white-space: pre-wrap; line-height: 1.7; padding: 6px 8px; '
            f'border: 1px solid rgba(128, 128, 128, 0.35); border-radius: 6px; user-select: text; '
            f'cursor: text;">{"".join(parts)}</div></div>')
