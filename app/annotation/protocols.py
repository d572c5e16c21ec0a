"""Evaluation protocols of campaigns (app.annotation.campaigns): one class per protocol, one registry `PROTOCOLS`
keyed by the ids listed under `campaign_protocols` in assets/annotation_protocols.json (labels and help live there).

A judgement is a plain JSON object. A protocol that judges each output on its own (`compares` False) takes one
object per output shown, keyed by its slot ("A", "B", …), and, with a single output, the object alone::

    {"A": {"score": 73, "spans": [...]}, "B": {"score": 40}}      # or {"score": 73} with one output
    check(...) -> {"outputs": {"A": {"score": 73, "spans": [...]}, "B": {"score": 40, "spans": []}}}

Pairwise preference judges the outputs together: {"preference": "A" | "B" | "tie" | "both_bad", "spans": [...]}.
Spans are app.annotation.spans spans; their `side` is "output" or "input" in a per-output part, "A", "B" or
"input" in a pairwise judgement. Relabelling takes entities on the source, [{start, end, label}].

`score(part)` gives one output's scores as {name: number} (pairwise: {"A": {...}, "B": {...}} via `scores`).
Every score but `hter` is higher-is-better: MQM is the negated penalty ({"mqm": -6.0}), so "a degraded copy scores
lower" is one rule (`higher_is_better` says which way a protocol's score goes).

`by_system(judgement, order)` renames slots to the systems they showed (the order recorded for that annotator),
which is how results, attention checks and exports read judgements.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from .spans import PROTOCOLS_PATH, check_spans, load_protocols, mqm_score

PREFERENCES = ("A", "B", "tie", "both_bad")
SLOTS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ENTITY_KEYS = ("start", "end", "label")
MAX_ENTITIES = 500


@dataclass(frozen=True)
class Shown:
    """An item as one annotator sees it: the source, the outputs by slot (in the order shown), the reference."""
    source: str
    outputs: Mapping[str, str]
    reference: str = ""


class CampaignRules(Protocol):
    """What a protocol reads of its campaign (app.annotation.campaigns.Campaign has these)."""
    categories: Sequence[Mapping[str, str]]     # the task's error categories: {id, label, help}
    labels: Sequence[str]


@dataclass(frozen=True)
class ProtocolInfo:
    id: str
    label: str
    help: str = ""
    keys: Mapping[str, str] = field(default_factory=dict)     # field -> what the annotator gives


def protocol_info(path: Path = PROTOCOLS_PATH) -> dict[str, ProtocolInfo]:
    """The labels and help of the campaign protocols, by id, from assets/annotation_protocols.json."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {p["id"]: ProtocolInfo(p["id"], p.get("label", p["id"]), p.get("help", ""), dict(p.get("fields", {})))
            for p in data.get("campaign_protocols", [])}


# ---------------------------------------------------------------------------------------------------------------
# Field checks shared by the protocols


def _number(value: Any, name: str, lo: float, hi: float, *, whole: bool) -> int | float:
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and
                                                                          not math.isfinite(value)):
        raise ValueError(f"`{name}` must be {kind} from {lo:g} to {hi:g}, got {json.dumps(value)[:40]}")
    if whole and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"`{name}` must be a whole number from {lo:g} to {hi:g}, got {value!r}")
        value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"`{name}` must be {kind} from {lo:g} to {hi:g}, got {value!r}")
    return value


def _category_ids(campaign: CampaignRules) -> list[str]:
    return [c["id"] for c in campaign.categories]


def spans_touch(spans: Sequence[Mapping[str, Any]], side: str, stretch: Sequence[int]) -> bool:
    """True when a span on `side` overlaps the characters stretch[0]:stretch[1]."""
    lo, hi = stretch
    return any(s["side"] == side and s["start"] < hi and lo < s["end"] for s in spans)


def word_edit_rate(hypothesis: str, corrected: str) -> float:
    """Word-level edit distance from `hypothesis` to `corrected` over the corrected length (HTER without shifts)."""
    a, b = hypothesis.split(), corrected.split()
    row = list(range(len(b) + 1))
    for i, wa in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, wb in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (wa != wb))
    return round(row[-1] / max(1, len(b)), 6)


def parse_tagged(output: str) -> list[tuple[str, str]]:
    """The entities of a tagging output as the app writes them ("Die Firma (ORG); Paris (LOC)"): (text, label)."""
    found = [re.fullmatch(r"\s*(.+?)\s*\(([^()]+)\)\s*", piece) for piece in output.split(";")]
    return [(m.group(1), m.group(2).strip()) for m in found if m]


def entity_f1(gold: Sequence[tuple[str, str]], predicted: Sequence[tuple[str, str]]) -> float:
    """F1 of two multisets of (text, label) entities; 1.0 when both are empty."""
    if not gold and not predicted:
        return 1.0
    rest, hits = list(gold), 0
    for e in predicted:
        if e in rest:
            rest.remove(e)
            hits += 1
    return round(2 * hits / (len(gold) + len(predicted)), 6)


# ---------------------------------------------------------------------------------------------------------------
# The protocols


class EvalProtocol:
    """One protocol: its required and optional fields (per output, or per item when it `compares` systems), its
    checks, its score. Subclasses set the class attributes and `check_output` / `score`."""
    id: ClassVar[str] = ""
    compares: ClassVar[bool] = False            # judges the outputs against each other (pairwise)
    required: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[Mapping[str, Any]] = {}  # field -> value when left out
    needs_labels: ClassVar[bool] = False        # the campaign must list labels
    degradable: ClassVar[bool] = True           # degraded copies make sense as attention checks
    metric: ClassVar[str | None] = "interval"   # Krippendorff metric of `agreement_value`; None: no alpha
    higher_is_better: ClassVar[bool] = True
    has_spans: ClassVar[bool] = False

    def check(self, judgement: Any, item: Shown, campaign: CampaignRules) -> dict[str, Any]:
        """The judgement normalised, or ValueError naming the output and field that is missing or wrong."""
        parts = self._parts(judgement, item)
        out = {}
        for slot, part in parts.items():
            where = f"output {slot}: " if len(item.outputs) > 1 else ""
            try:
                out[slot] = self.check_output(self._fields(part), item.outputs[slot], item, campaign)
            except ValueError as e:
                raise ValueError(f"{where}{e}") from None
        return {"outputs": out}

    def _parts(self, judgement: Any, item: Shown) -> dict[str, Any]:
        if not isinstance(judgement, Mapping):
            raise ValueError(f"the judgement must be a JSON object such as {self.example()}")
        judgement = judgement.get("outputs", judgement) if set(judgement) == {"outputs"} else judgement
        slots = list(item.outputs)
        if not set(judgement) & set(slots):
            if len(slots) == 1:
                return {slots[0]: judgement}
            raise ValueError(f"this item shows outputs {', '.join(slots)}: give one judgement per output, "
                             f"{{{', '.join(f'{s!r}: {self.example()}' for s in slots)}}}")
        missing = [s for s in slots if s not in judgement]
        if missing:
            raise ValueError(f"no judgement for output {', '.join(missing)}: judge every output shown")
        extra = sorted(set(judgement) - set(slots))
        if extra:
            raise ValueError(f"unknown key(s) {', '.join(extra)}: the outputs shown are {', '.join(slots)}")
        return {s: judgement[s] for s in slots}

    def _fields(self, part: Any) -> dict[str, Any]:
        if not isinstance(part, Mapping):
            raise ValueError(f"expected an object such as {self.example()}, got {json.dumps(part)[:40]}")
        missing = [f for f in self.required if part.get(f) is None]
        if missing:
            raise ValueError(f"missing {', '.join(f'`{f}`' for f in missing)}: {self.id.upper()} needs "
                             f"{', '.join(self.required)} (e.g. {self.example()})")
        extra = sorted(set(part) - set(self.required) - set(self.optional))
        if extra:
            raise ValueError(f"unknown field(s) {', '.join(extra)}: {self.id.upper()} takes "
                             f"{', '.join([*self.required, *self.optional])}")
        return {**self.optional, **{k: part[k] for k in part if part[k] is not None}}

    def example(self) -> str:
        raise NotImplementedError

    def check_output(self, part: dict[str, Any], text: str, item: Shown, campaign: CampaignRules) -> dict[str, Any]:
        raise NotImplementedError

    def score(self, part: Mapping[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def scores(self, judgement: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        """Scores by slot (or by system, for a judgement in `by_system` form)."""
        return {key: self.score(part) for key, part in judgement["outputs"].items()}

    def agreement_value(self, part: Mapping[str, Any]) -> Any:
        """The value compared between annotators (Krippendorff's alpha, `metric`)."""
        return next(iter(self.score(part).values()))

    def spans_of(self, part: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The spans marking one output (side "output"), as {start, end, side, …}."""
        return [s for s in part.get("spans", []) if s["side"] == "output"]

    def by_system(self, judgement: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
        """The judgement with slots renamed to the systems they showed (`order`: systems in slot order)."""
        names = dict(zip(SLOTS, order))
        return {"outputs": {names[slot]: part for slot, part in judgement["outputs"].items()}}

    def by_slot(self, judgement: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
        """The inverse of `by_system`."""
        slots = {system: slot for slot, system in zip(SLOTS, order)}
        parts = {slots[system]: part for system, part in judgement["outputs"].items()}
        return {"outputs": dict(sorted(parts.items()))}

    def passes_degraded(self, original: Mapping[str, Any] | None, degraded: Mapping[str, Any],
                        stretches: Mapping[str, Sequence[int]]) -> bool | None:
        """An attention check on a degraded copy (both judgements `by_system`; `stretches`: system -> the
        replaced characters): passes when each degraded output scores lower than the same annotator's original
        or has its stretch marked by a span. None when it cannot be told (no original and no spans)."""
        verdicts = []
        for system, stretch in stretches.items():
            part = degraded["outputs"][system]
            marked = self.has_spans and spans_touch(self.spans_of(part), "output", stretch)
            first = original["outputs"].get(system) if original else None
            if first is None:
                verdicts.append(True if marked else None)
                continue
            new, old = self.agreement_value(part), self.agreement_value(first)
            verdicts.append(marked or (new < old if self.higher_is_better else new > old))
        return None if None in verdicts else all(verdicts)

    def matches(self, expected: Mapping[str, Any], judgement: Mapping[str, Any]) -> bool:
        """An expected-answer check: `expected` is {field: value} for every output, or {system: {field: value}};
        a value [lo, hi] is a range (inclusive). `judgement` in `by_system` form."""
        for system, part in judgement["outputs"].items():
            wanted = expected.get(system, expected) if isinstance(expected.get(system), Mapping) else expected
            if not all(_matches(part.get(k), v) for k, v in wanted.items()):
                return False
        return True


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, list) and len(wanted) == 2 and all(isinstance(w, (int, float)) for w in wanted):
        return isinstance(value, (int, float)) and wanted[0] <= value <= wanted[1]
    return value == wanted


class Likert(EvalProtocol):
    id = "likert"
    required = ("rating",)

    def example(self) -> str:
        return '{"rating": 4}'

    def check_output(self, part, text, item, campaign):
        return {"rating": _number(part["rating"], "rating", 1, 5, whole=True)}

    def score(self, part):
        return {"likert": float(part["rating"])}


class DirectAssessment(EvalProtocol):
    id = "da"
    required = ("score",)

    def example(self) -> str:
        return '{"score": 73}'

    def check_output(self, part, text, item, campaign):
        return {"score": _number(part["score"], "score", 0, 100, whole=False)}

    def score(self, part):
        return {"da": float(part["score"])}


class ESA(EvalProtocol):
    id = "esa"
    required = ("score",)
    optional = {"spans": []}
    has_spans = True

    def example(self) -> str:
        return '{"score": 73, "spans": [{"start": 0, "end": 4, "side": "output", "category": "", "severity": "minor"}]}'

    def check_output(self, part, text, item, campaign):
        spans = check_spans(part["spans"], {"output": text, "input": item.source}, "esa", _category_ids(campaign),
                            load_protocols())
        return {"score": _number(part["score"], "score", 0, 100, whole=True), "spans": spans}

    def score(self, part):
        return {"esa": float(part["score"])}


class MQM(EvalProtocol):
    id = "mqm"
    required = ("spans",)
    has_spans = True

    def example(self) -> str:
        return '{"spans": [{"start": 0, "end": 4, "side": "output", "category": "accuracy", "severity": "major"}]}'

    def check_output(self, part, text, item, campaign):
        return {"spans": check_spans(part["spans"], {"output": text, "input": item.source}, "mqm", [],
                                     load_protocols())}

    def score(self, part):
        penalty = mqm_score(part["spans"], load_protocols())
        return {"mqm": -penalty if penalty else 0.0}


class Pairwise(EvalProtocol):
    """A/B preference ("tie": equally good, "both_bad"); optional spans on A, B or the input."""
    id = "pairwise"
    compares = True
    required = ("preference",)
    optional = {"spans": []}
    metric = "nominal"
    has_spans = True
    POINTS: ClassVar[Mapping[str, float]] = {"win": 1.0, "tie": 0.5, "both_bad": 0.0, "loss": 0.0}

    def example(self) -> str:
        return '{"preference": "A"}'

    def check(self, judgement, item, campaign):
        if len(item.outputs) != 2:
            raise ValueError(f"pairwise preference needs two outputs; this item shows {len(item.outputs)}")
        part = self._fields(judgement)
        if part["preference"] not in PREFERENCES:
            raise ValueError(f"`preference` must be one of {', '.join(PREFERENCES)} (A better, B better, equally "
                             f"good, both bad), got {json.dumps(part['preference'])[:40]}")
        spans = check_spans(part["spans"], {**item.outputs, "input": item.source}, "esa", _category_ids(campaign),
                            load_protocols())
        return {"preference": part["preference"], "spans": spans}

    def score(self, part):
        raise TypeError("pairwise judgements are scored per item: use scores()")

    def scores(self, judgement):
        """Points per output (a win 1, a tie 0.5, a loss or "both bad" 0), by slot or, `by_system`, by system."""
        pref = judgement["preference"]
        return {k: {"pairwise": self.POINTS["tie" if pref == "tie" else "both_bad" if pref == "both_bad" else
                                            "win" if pref == k else "loss"]}
                for k in judgement.get("systems", SLOTS[:2])}

    def agreement_value(self, judgement):
        return judgement["preference"]

    def by_system(self, judgement, order):
        names = dict(zip(SLOTS, order))
        return {"preference": names.get(judgement["preference"], judgement["preference"]),
                "spans": [{**s, "side": names.get(s["side"], s["side"])} for s in judgement["spans"]],
                "systems": list(order)}

    def by_slot(self, judgement, order):
        slots = {system: slot for slot, system in zip(SLOTS, order)}
        return {"preference": slots.get(judgement["preference"], judgement["preference"]),
                "spans": [{**s, "side": slots.get(s["side"], s["side"])} for s in judgement["spans"]]}

    def passes_degraded(self, original, degraded, stretches):
        """The copy with one output degraded passes when the other is preferred or the stretch is marked."""
        (system, stretch), = stretches.items()
        other = next(s for s in degraded["systems"] if s != system)
        return degraded["preference"] == other or spans_touch(degraded["spans"], system, stretch)

    def matches(self, expected, judgement):
        return all(_matches(judgement.get(k), v) for k, v in expected.items())


class LabelChoice(EvalProtocol):
    """Classification: the right label for the input, one of the campaign's; scores whether the output had it."""
    id = "label"
    required = ("label",)
    needs_labels = True
    degradable = False
    metric = "nominal"

    def example(self) -> str:
        return '{"label": "positive"}'

    def check_output(self, part, text, item, campaign):
        if part["label"] not in campaign.labels:
            raise ValueError(f"`label` {json.dumps(part['label'])[:40]} is not one of this campaign's labels: "
                             f"{', '.join(campaign.labels)}")
        return {"label": part["label"], "_output": text}

    def score(self, part):
        return {"label_correct": float(part.get("_output", "").strip() == part["label"])}

    def agreement_value(self, part):
        return part["label"]


class Relabel(EvalProtocol):
    """Tagging: the entities of the source as they should be, [{start, end, label}] (Python character offsets,
    labels of the campaign); scores the output's entities against them (F1)."""
    id = "relabel"
    required = ("entities",)
    needs_labels = True
    degradable = False
    metric = None

    def example(self) -> str:
        return '{"entities": [{"start": 0, "end": 5, "label": "LOC"}]}'

    def check_output(self, part, text, item, campaign):
        entities = part["entities"]
        if not isinstance(entities, list) or len(entities) > MAX_ENTITIES:
            raise ValueError(f"`entities` must be a list of at most {MAX_ENTITIES} {{start, end, label}} objects")
        out = sorted((_entity(e, n, item.source, campaign.labels) for n, e in enumerate(entities, start=1)),
                     key=lambda e: (e["start"], e["end"]))
        for a, b in zip(out, out[1:]):
            if b["start"] < a["end"]:
                raise ValueError(f"entities {item.source[a['start']:a['end']]!r} and "
                                 f"{item.source[b['start']:b['end']]!r} overlap: an entity has one label")
        return {"entities": out, "_output": text, "_source": item.source}

    def score(self, part):
        source = part.get("_source", "")
        gold = [(source[e["start"]:e["end"]], e["label"]) for e in part["entities"]]
        return {"entity_f1": entity_f1(gold, parse_tagged(part.get("_output", "")))}

    def spans_of(self, part):
        return [{"start": e["start"], "end": e["end"], "side": "input"} for e in part["entities"]]


def _entity(e: Any, n: int, source: str, labels: Sequence[str]) -> dict[str, Any]:
    if not isinstance(e, Mapping) or set(e) != set(ENTITY_KEYS):
        raise ValueError(f"entity {n}: expected an object {{start, end, label}}, got {json.dumps(e)[:60]}")
    for name in ("start", "end"):
        if isinstance(e[name], bool) or not isinstance(e[name], int):
            raise ValueError(f"entity {n}: `{name}` must be a whole number (a character offset in the source)")
    if not 0 <= e["start"] < e["end"] <= len(source):
        raise ValueError(f"entity {n}: characters {e['start']}–{e['end']} are outside the source "
                         f"({len(source)} characters)")
    if e["label"] not in labels:
        raise ValueError(f"entity {n}: label {json.dumps(e['label'])[:40]} is not one of {', '.join(labels)}")
    return {"start": e["start"], "end": e["end"], "label": e["label"]}


class PostEdit(EvalProtocol):
    """The output corrected; its score is the word edit rate (HTER without shifts: 0 = no change, lower is
    better). The corrected text is required, so "not looked at" and "no correction needed" differ."""
    id = "postedit"
    required = ("corrected",)
    higher_is_better = False

    def example(self) -> str:
        return '{"corrected": "The corrected output."}'

    def check_output(self, part, text, item, campaign):
        if not isinstance(part["corrected"], str):
            raise ValueError("`corrected` must be text: the output as it should read (the output itself when it "
                             "needs no correction)")
        return {"corrected": part["corrected"], "_output": text}

    def score(self, part):
        return {"hter": word_edit_rate(part.get("_output", ""), part["corrected"])}

    def passes_degraded(self, original, degraded, stretches):
        """Passes when each degraded output was corrected at all (its replaced words changed)."""
        return all(degraded["outputs"][s]["corrected"] != degraded["outputs"][s]["_output"] for s in stretches)


PROTOCOLS: dict[str, EvalProtocol] = {p.id: p for p in (
    Likert(), DirectAssessment(), ESA(), MQM(), Pairwise(), LabelChoice(), Relabel(), PostEdit())}


def public(judgement: Mapping[str, Any]) -> dict[str, Any]:
    """A checked judgement without the context `check` adds for scoring (keys starting with "_"): what is stored,
    exported and shown. `check` on it gives the full form again."""
    if "outputs" not in judgement:
        return dict(judgement)
    return {**judgement, "outputs": {k: {f: v for f, v in part.items() if not f.startswith("_")}
                                     for k, part in judgement["outputs"].items()}}


def protocol_named(protocol_id: str) -> EvalProtocol:
    """The protocol `protocol_id`; ValueError naming the known ones otherwise."""
    if protocol_id not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol_id!r}: use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol_id]
