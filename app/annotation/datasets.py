"""From linguists' work to training data: (input, target) pairs with a held-out split, counted before anything runs.

Where targets come from:
- the Annotations store: every live annotation of a task with a corrected output (the linguist's correction is the
  target; the model's output is not);
- a campaign: post-edits (`postedit`: the corrected text of each output), chosen labels (`label`: the label is the
  target), and relabelled entities (`relabel`: the source's entities as "text (LABEL)" joined by "; ", the
  prompted tagger's format). Attention checks never count.

The rules, applied in this order:
1. Duplicates: the same (input, target) given by several annotators (or for several outputs) is one example; its
   `votes` count them.
2. Disagreement: one input with different targets keeps the target most votes give; a tie drops the input (it
   is counted, never decided by chance or by time).
3. Held-out: an input is held out when the first 8 hex digits of sha256(input) modulo 100 fall below the held-out
   percentage (10 by default). The split depends on the input alone, so an input held out once is held out in
   every dataset built later from the same or a larger store, and never enters training.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .campaigns import get_campaign, judged
from .protocols import protocol_named
from .rights import Identity, require_admin
from .store import AnnotationStore

HELD_OUT_PERCENT = 10
MAX_EXAMPLES = 200_000          # a dataset larger than this is refused: train from a file instead
CAMPAIGN_PROTOCOLS = ("postedit", "label", "relabel")


@dataclass(frozen=True)
class Example:
    input: str
    target: str
    votes: int


@dataclass(frozen=True)
class Dataset:
    source: str                                   # "annotations of summarization" or "campaign NAME"
    task: str
    train: list[Example]
    heldout: list[Example]
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        return (f"{self.source}: {c['judgements']} judgement(s) with a target → {c['inputs']} input(s); "
                f"{c['duplicates']} duplicate(s) merged, {c['conflicts_kept']} disagreement(s) settled by "
                f"majority, {c['conflicts_dropped']} tie(s) dropped; {len(self.train)} for training, "
                f"{len(self.heldout)} held out ({HELD_OUT_PERCENT}% of inputs by hash, never trained on).")

    def fingerprint(self) -> str:
        """sha256 of the examples, the split included: stored with a model trained on them."""
        rows = [[e.input, e.target, split] for split, part in (("train", self.train), ("heldout", self.heldout))
                for e in part]
        return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def held_out(text: str, percent: int = HELD_OUT_PERCENT) -> bool:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100 < percent


def build(pairs: Iterable[tuple[str, str]], source: str, task: str, percent: int = HELD_OUT_PERCENT) -> Dataset:
    """The dataset of (input, target) pairs under the module's rules."""
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    given = 0
    for text, target in pairs:
        if text.strip() and target.strip():
            votes[text][target] += 1
            given += 1
    if len(votes) > MAX_EXAMPLES:
        raise ValueError(f"{len(votes):,} inputs: the limit for a dataset built in the app is {MAX_EXAMPLES:,}")
    train, heldout, kept, dropped = [], [], 0, 0
    for text, targets in votes.items():
        ranked = targets.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            dropped += 1
            continue
        kept += len(ranked) > 1
        (heldout if held_out(text, percent) else train).append(Example(text, ranked[0][0], ranked[0][1]))
    counts = {"judgements": given, "inputs": len(votes), "duplicates": given - sum(len(t) for t in votes.values()),
              "conflicts_kept": kept, "conflicts_dropped": dropped}
    return Dataset(source, task, train, heldout, counts)


def from_annotations(store: AnnotationStore, task: str, model: str | None = None) -> Dataset:
    """The corrections saved for `task` (and `model`, when given) in the Annotations store."""
    pairs = ((a.input, a.corrected_output) for a in store.query(task=task, model=model) if a.corrected_output)
    return build(pairs, f"annotations of {task}" + (f" ({model})" if model else ""), task)


def from_campaign(store: AnnotationStore, campaign_id: str, ident: Identity) -> Dataset:
    """The targets a campaign's judgements give (admins): post-edits, labels or relabelled entities."""
    require_admin(ident, "Building a training set from a campaign")
    camp = get_campaign(store, campaign_id)
    if camp.protocol not in CAMPAIGN_PROTOCOLS:
        raise ValueError(f"campaign {camp.name!r} uses {camp.protocol}, which gives no target to train on: "
                         f"training sets come from {', '.join(CAMPAIGN_PROTOCOLS)} campaigns")
    protocol = protocol_named(camp.protocol)
    pairs = []
    for j in judged(store, camp):
        if j.item.check_kind:
            continue
        for part in j.judgement.get("outputs", {}).values():
            pairs.append((j.item.source, target_of(protocol.id, part, j.item.source)))
    return build(pairs, f"campaign {camp.name}", camp.task)


def target_of(protocol: str, part: dict[str, Any], source: str) -> str:
    if protocol == "postedit":
        return part["corrected"]
    if protocol == "label":
        return part["label"]
    return "; ".join(f"{source[e['start']:e['end']]} ({e['label']})" for e in part["entities"])


def write(dataset: Dataset, folder: str | Path) -> dict[str, Path]:
    """train.jsonl and heldout.jsonl ({"input", "target", "votes"} per line) and dataset.json (source, task,
    counts, rules, fingerprint) under `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"train": folder / "train.jsonl", "heldout": folder / "heldout.jsonl", "about": folder / "dataset.json"}
    for name in ("train", "heldout"):
        rows = getattr(dataset, name)
        paths[name].write_text("".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in rows),
                               encoding="utf-8")
    paths["about"].write_text(json.dumps({
        "source": dataset.source, "task": dataset.task, "counts": dataset.counts, "train": len(dataset.train),
        "heldout": len(dataset.heldout), "heldout_percent": HELD_OUT_PERCENT, "fingerprint": dataset.fingerprint(),
        "rules": "duplicates merged; disagreements by majority, ties dropped; held out by sha256(input)"},
        ensure_ascii=False, indent=2), encoding="utf-8")
    return paths
