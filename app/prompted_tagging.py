"""Zero-shot token tagging with a text-to-text checkpoint (mT0): one extraction prompt per entity type, every
returned string aligned to its occurrences in the input (`app.align`, exact or normalized only) and turned into
word-level BIO tags. A checkpoint with a token-classification head still uses its head (`tasks.tag`).

Approximate by design: mT0 was never trained on NER, so the strings it returns are taken only where the input
holds them; the others are listed as rejected, never tagged.

Words, for the BIO tags: maximal runs of non-space characters, and every character of a script written without
spaces (CJK, Thai, ...: `tasks.unspaced`) its own word. No Gradio here: the tab and /tag are thin layers.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.textgen import generate_text

from . import align
from .assets import ASSETS
from .errors import UserError
from .limits import check_template_limits, generation_work
from .models import Loaded
from .tasks import (MAX_INPUT_TOKENS, Decoding, Entity, Tagging, check_decoding, highlight, input_cap, is_rtl,
                    needs_generation, preset_decoding, require_text, tag, unspaced)

PRESETS_FILE = ASSETS / "prompts" / "tagging.json"
METHOD = "zero-shot (approximate)"
HEAD = "token-classification head"
MAX_TYPES = 12                 # one generated answer per type, in one batch: bounded
MAX_TYPE_CHARS = 60
MAX_TYPE_TOKENS = 24           # tokens, not characters: byte pieces make a short string many tokens
TEMPLATE_USES = {"text": 1, "type": 3}
PLACEHOLDER = re.compile(r"\{(text|type)\}")
# how a model separates the strings it lists: commas (also the CJK and Arabic ones), semicolons, newlines
SEPARATORS = re.compile(r"[,;\n\r、，；،؛]+")
QUOTES = "\"'“”‘’«»「」『』"


@dataclass(frozen=True)
class Defaults:
    types: tuple[str, ...]
    template: str


@functools.cache
def load_defaults(path: Path = PRESETS_FILE) -> Defaults:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return Defaults(tuple(data["types"]), data["template"])


@functools.cache
def registry_preset(path: Path = ASSETS / "models.json") -> dict | None:
    """The tagging entry's decoding preset in the model registry (the one place it is written)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["tasks"]["tagging"].get("decoding")


@dataclass
class Rejected:
    text: str        # as the model returned it
    type: str
    reason: str      # "not in the text" | "overlaps <type> 'text'"


@dataclass
class PromptedTagging:
    """Entities found by prompting. `entities` carry character offsets into the input and how they were aligned
    (`how`: exact | normalized); `words` are the input's words with their BIO tags."""
    entities: list[Entity]
    segments: list[tuple[str, str | None]]   # the whole input, entities labelled by type
    words: list[dict[str, Any]]              # {text, label (B-type | I-type | O), start, end}
    rejected: list[Rejected]
    outputs: dict[str, str]                  # type -> what the model generated for it
    prompts: dict[str, str]                  # type -> what the encoder read
    how: list[str]                           # per entity: exact | normalized
    rtl: bool
    truncated: bool
    settings: dict[str, Any] = field(default_factory=dict)
    method: str = METHOD


# ------------------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------------------
def parse_types(types: str | list[str] | None) -> list[str]:
    """Entity types as typed, comma- or newline-separated, spaces collapsed, each once; none is a UserError."""
    parts = SEPARATORS.split(types) if isinstance(types, str) else [str(t) for t in types or []]
    names: list[str] = []
    for p in parts:
        name = " ".join(p.split())
        if name and name not in names:
            names.append(name)
    if not names:
        raise UserError("No entity types given: type at least one, e.g. person, location, organisation, date "
                        "(comma-separated).")
    if len(names) > MAX_TYPES:
        raise UserError(f"{len(names)} entity types given; at most {MAX_TYPES} are prompted at once: remove some.")
    long = next((n for n in names if len(n) > MAX_TYPE_CHARS), None)
    if long is not None:
        raise UserError(f"The entity type {long[:30]!r}… is {len(long)} characters long; at most "
                        f"{MAX_TYPE_CHARS}: shorten it.")
    return names


def check_template(template: str | None) -> str:
    """The template must hold {text} (where the input goes) and {type} (where the entity type goes)."""
    if not isinstance(template, str) or not template.strip():
        raise UserError("The prompt template is empty: write one with {text} where the text goes and {type} where "
                        "the entity type goes (clear the box to restore the default).")
    found = PLACEHOLDER.findall(template)
    check_template_limits(template, {name: found.count(name) for name in set(found)}, TEMPLATE_USES)
    used = set(found)
    for name, what in (("text", "the text"), ("type", "the entity type")):
        if name not in used:
            raise UserError(f"The prompt template has no {{{name}}} placeholder: put {{{name}}} where {what} goes, "
                            f"as in {load_defaults().template!r}.")
    return template


def render(template: str, text: str, type_: str) -> str:
    """The template filled in one pass (a `{…}` inside the text stays as it is)."""
    return PLACEHOLDER.sub(lambda m: text if m.group(1) == "text" else type_, template)


def fit_text(tokenizer, template: str, text: str, types: list[str], max_input_tokens: int) -> tuple[str, bool]:
    """The longest prefix of `text` (cut on a token's end) with which every type's prompt fits the model's input;
    returns (prefix, whether it was cut). Offsets into the prefix are offsets into `text`.

    Built by tokens: the template around the text is counted first, with the longest type (the template and the
    types are bounded), then the text, capped to what `max_input_tokens` can hold, is cut to the room left."""
    cap = input_cap(max_input_tokens)
    cut = text[:cap]
    around = max(len(tokenizer.encode(render(template, "", t), add_special_tokens=False)) for t in types)
    room = max_input_tokens - 1 - around - 8   # `</s>`, and a few tokens spare: pieces merge differently at joins
    if room < 1:
        raise UserError(f"The prompt template with an entity type takes {around:,} of the model's "
                        f"{max_input_tokens} input tokens, leaving no room for the text: shorten the template.")
    offsets = tokenizer(cut, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    if len(offsets) <= room:
        return cut, len(text) > cap
    return cut[: offsets[room - 1][1]], True


def check_type_tokens(tokenizer, names: list[str]) -> None:
    """An entity type over MAX_TYPE_TOKENS tokens is a UserError."""
    for name in names:
        n = len(tokenizer.encode(name, add_special_tokens=False))
        if n > MAX_TYPE_TOKENS:
            raise UserError(f"The entity type {name[:30]!r} is {n} tokens long; at most {MAX_TYPE_TOKENS}: "
                            "shorten it.")


# ------------------------------------------------------------------------------------------------------------
# Pure steps: split the outputs, align them, words and BIO
# ------------------------------------------------------------------------------------------------------------
def split_output(output: str) -> list[str]:
    """The strings a model listed: split on commas/semicolons/newlines, stripped (spaces, quotes, a final
    period), each once (case-insensitively), in order."""
    seen: set[str] = set()
    out: list[str] = []
    for part in SEPARATORS.split(output or ""):
        s = part.strip().strip(QUOTES).strip()
        if s.endswith(".") and s.count(".") == 1:   # "Paris." but not "U.S."
            s = s[:-1].rstrip()
        if s and s.casefold() not in seen:
            seen.add(s.casefold())
            out.append(s)
    return out


def align_strings(text: str, found: Mapping[str, list[str]]) -> tuple[list[Entity], list[str], list[Rejected]]:
    """Every occurrence of every string (`align.find_all`, exact or normalized: fuzzy spans would tag wrong
    words), then overlaps settled: the one starting first wins, at equal starts the longest, then the earlier
    type. Returns (entities left to right, how each was aligned, rejected strings: none of whose occurrences
    is tagged)."""
    candidates = []   # (start, -length, type index, string index, match, type, string)
    for t, (type_, strings) in enumerate(found.items()):
        for k, s in enumerate(strings):
            for m in align.find_all(text, s):
                candidates.append((m.start, m.start - m.end, t, k, m, type_, s))
    candidates.sort(key=lambda c: c[:4])
    entities: list[Entity] = []
    how: list[str] = []
    tagged: set[tuple[str, str]] = set()
    lost: dict[tuple[str, str], Entity] = {}
    for start, _, _, _, m, type_, s in candidates:
        if entities and start < entities[-1].end:
            lost.setdefault((type_, s), entities[-1])
            continue
        entities.append(Entity(text[m.start:m.end], type_, m.score, m.start, m.end))
        how.append(m.how)
        tagged.add((type_, s))
    rejected = []
    for type_, strings in found.items():
        for s in strings:
            if (type_, s) in tagged:
                continue
            winner = lost.get((type_, s))
            reason = (f"overlaps {winner.label} {winner.text!r}" if winner is not None else "not in the text")
            rejected.append(Rejected(s, type_, reason))
    return entities, how, rejected


def split_words(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word: maximal runs of non-space characters; each character of a script written
    without spaces is a word of its own."""
    words: list[tuple[int, int]] = []
    start = None
    for i, ch in enumerate(text):
        if ch.isspace() or unspaced(ch):
            if start is not None:
                words.append((start, i))
                start = None
            if not ch.isspace():
                words.append((i, i + 1))
        elif start is None:
            start = i
    if start is not None:
        words.append((start, len(text)))
    return words


def bio_tags(text: str, entities: list[Entity]) -> list[dict[str, Any]]:
    """Every word with its BIO tag: a word overlapping an entity takes its type (B- on the entity's first word,
    I- after); a word overlapping two entities takes the first. `entities` must not overlap (`align_strings`)."""
    out = []
    spans = sorted(entities, key=lambda e: e.start)
    j, current = 0, None
    for start, end in split_words(text):
        while j < len(spans) and spans[j].end <= start:
            j += 1
        hit = spans[j] if j < len(spans) and spans[j].start < end else None
        if hit is None:
            label = "O"
        else:
            label = ("I-" if hit is current else "B-") + hit.label
        current = hit
        out.append({"text": text[start:end], "label": label, "start": start, "end": end})
    return out


def entities_from_bio(words: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """(start of first word, end of last word, type) of each B-/I- run: the BIO tags read back as spans."""
    runs: list[list] = []
    prev = "O"
    for w in words:
        prefix, _, type_ = w["label"].partition("-")
        if prefix == "B" or (prefix == "I" and prev.partition("-")[2] != type_):
            runs.append([w["start"], w["end"], type_])
        elif prefix == "I":
            runs[-1][1] = w["end"]
        prev = w["label"]
    return [(s, e, t) for s, e, t in runs]


def tag_outputs(text: str, outputs: Mapping[str, str]) -> tuple[list[Entity], list[str], list[dict], list[Rejected]]:
    """The pure half of prompted tagging: the model's output per type -> (entities, how each aligned, BIO words,
    rejected strings)."""
    found = {type_: split_output(out) for type_, out in outputs.items()}
    entities, how, rejected = align_strings(text, found)
    return entities, how, bio_tags(text, entities), rejected


# ------------------------------------------------------------------------------------------------------------
# With a model
# ------------------------------------------------------------------------------------------------------------
def tag_prompted(loaded: Loaded, text: str, types: str | list[str] | None, template: str | None,
                 decoding: Decoding | None = None, max_input_tokens: int = MAX_INPUT_TOKENS) -> PromptedTagging:
    """One greedy answer per entity type to `template` ({text}, {type}), aligned to `text`. `decoding` gives the
    length; None: the checkpoint's own, or the registry's preset when it ships none (`tasks.preset_decoding`)."""
    text = require_text(text)
    names = parse_types(types)
    check_template(template)
    needs_generation(loaded, "Zero-shot tagging")
    decoding = decoding or preset_decoding(loaded.model.generation_config, registry_preset())
    gen = check_decoding(loaded.model, Decoding(max_new_tokens=decoding.max_new_tokens, num_beams=1,
                                                do_sample=False))
    check_type_tokens(loaded.tokenizer, names)
    cut, truncated = fit_text(loaded.tokenizer, template, text, names, max_input_tokens)
    loaded.afford(generation_work({**gen, "num_return_sequences": 1}, len(names), max_input_tokens,
                                  f"{len(names)} entity types"), "use fewer entity types or fewer new tokens.")
    prompts = {t: render(template, cut, t) for t in names}
    answers = generate_text(loaded.model, loaded.tokenizer, list(prompts.values()), max_input_tokens,
                            **{**gen, "num_return_sequences": 1})
    outputs = dict(zip(names, (a.strip() for a in answers)))
    entities, how, words, rejected = tag_outputs(cut, outputs)
    return PromptedTagging(entities, highlight(text, [(e.start, e.end, e.label) for e in entities]), words,
                           rejected, outputs, prompts, how, is_rtl(text), truncated, gen)


def tag_checkpoint(loaded: Loaded, text: str, types: str | list[str] | None = None, template: str | None = None,
                   decoding: Decoding | None = None) -> Tagging | PromptedTagging:
    """The way the loaded checkpoint can tag: its token-classification head (types and template unused), else
    zero-shot prompting (types or template None: the defaults of assets/prompts/tagging.json)."""
    if loaded.head == "token-classification":
        return tag(loaded, text)
    defaults = load_defaults()
    types = list(defaults.types) if types is None else types
    return tag_prompted(loaded, text, types, template if template is not None else defaults.template, decoding)


def source_of(result: Tagging | PromptedTagging) -> str:
    """Where the entities came from: "prompt" or "head"."""
    return "prompt" if isinstance(result, PromptedTagging) else "head"


def method_of(result: Tagging | PromptedTagging) -> str:
    return getattr(result, "method", HEAD)
