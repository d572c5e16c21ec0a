"""Prompted classification: a text-to-text checkpoint (mT0) scores labels the user types, by rank classification
as T0/mT0 are evaluated (`model.ranking`); a checkpoint with a classification head still uses its head.

The prompt templates are data (`assets/prompts/classification.json`, promptsource/xP3 style: the choices listed
in the prompt). No Gradio here: the classification tab and the /classify endpoint are thin layers over
`classify_checkpoint`.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from model.ranking import rank_choices

from .assets import ASSETS
from .errors import UserError
from .limits import Work, check_template_limits
from .models import Loaded
from .tasks import MAX_INPUT_TOKENS, Classification, classify, input_cap, needs_generation, require_text

MAX_LABELS = 100          # one decoder batch of (prompts x labels) rows: bounded
MAX_LABEL_CHARS = 200
MAX_LABEL_TOKENS = 64     # tokens, not characters: 200 emoji are 800 byte pieces, and attention grows with the square
TEMPLATE_USES = {"text": 1, "premise": 1, "hypothesis": 1, "choices": 1}
PRESETS_FILE = ASSETS / "prompts" / "classification.json"
PLACEHOLDER = re.compile(r"\{(text|premise|hypothesis|choices)\}")
RANK = "rank classification"
HEAD = "classification head"


@dataclass(frozen=True)
class Preset:
    """A labelled prompt template: the inputs it reads, its labels, and how {choices} joins them."""
    name: str
    title: str
    fields: tuple[str, ...]      # ("text",) or ("premise", "hypothesis")
    labels: tuple[str, ...]
    template: str
    separator: str = ", "


@functools.cache
def load_presets(path: Path = PRESETS_FILE) -> dict[str, Preset]:
    """The presets by name, the default first (read once, when first asked for)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))["presets"]
    return {name: Preset(name, p["title"], tuple(p["fields"]), tuple(p["labels"]), p["template"],
                         p.get("separator", ", ")) for name, p in data.items()}


def preset_named(name: str | None) -> Preset:
    presets = load_presets()
    if not name:
        return next(iter(presets.values()))
    if name not in presets:
        raise UserError(f"Unknown preset {name!r}: use one of {', '.join(presets)}.")
    return presets[name]


@dataclass
class RankedClassification:
    """Labels scored by rank classification. `probabilities` is the softmax over `scores` (summed log-probs of
    each label's tokens, `</s>` included; divided by their count when `normalized`)."""
    label: str
    probabilities: dict[str, float]   # every label as typed, most probable first
    scores: dict[str, float]
    method: str
    prompt: str                       # what the encoder read (the text cut to fit when `truncated`)
    normalized: bool
    truncated: bool
    multi_label: bool = False


# ------------------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------------------
def parse_labels(labels: str | list[str] | None) -> list[str]:
    """The labels as typed: one per line when more than one line holds text (so a label may hold a comma),
    else comma-separated; spaces around each are dropped. Fewer than two, more than MAX_LABELS, an over-long one
    or a repeated one is a UserError."""
    if isinstance(labels, str):
        parts = [line for line in labels.splitlines() if line.strip()]
        parts = parts if len(parts) > 1 else labels.split(",")
    else:
        parts = [str(p) for p in labels or []]
    names = [" ".join(p.split()) for p in parts]
    names = [n for n in names if n]
    if not names:
        raise UserError("No labels given: type at least two, separated by commas or one per line (or pick a "
                        "preset).")
    if len(names) == 1:
        raise UserError(f"Only one label ({names[0]!r}): type at least two to choose between, separated by "
                        "commas or one per line.")
    if len(names) > MAX_LABELS:
        raise UserError(f"{len(names)} labels given; at most {MAX_LABELS} can be scored at once: remove some.")
    long = next((n for n in names if len(n) > MAX_LABEL_CHARS), None)
    if long is not None:
        raise UserError(f"The label {long[:40]!r}… is {len(long)} characters long; a label may have at most "
                        f"{MAX_LABEL_CHARS}: shorten it.")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise UserError(f"The label {n!r} is given more than once: list each label once.")
        seen.add(n)
    return names


def check_template(template: str | None, fields: tuple[str, ...]) -> str:
    """The template must hold a placeholder for each input field, and no other input's."""
    if not isinstance(template, str) or not template.strip():
        raise UserError("The prompt template is empty: write one with {text} where the text goes (and {choices} "
                        "where the labels are listed), or pick a preset to restore its template.")
    found = PLACEHOLDER.findall(template)
    check_template_limits(template, {name: found.count(name) for name in set(found)}, TEMPLATE_USES)
    used = set(found)
    for f in fields:
        if f not in used:
            raise UserError(f"The prompt template has no {{{f}}} placeholder: put {{{f}}} where the {f} goes "
                            "(pick a preset to see an example).")
    foreign = sorted(used - set(fields) - {"choices"})
    if foreign:
        raise UserError(f"The prompt template uses {{{foreign[0]}}}, which this preset has no input for: use "
                        f"{', '.join('{' + f + '}' for f in fields)} (and {{choices}}).")
    return template


def render(template: str, values: Mapping[str, str]) -> str:
    """The template with its placeholders filled in one pass (a `{…}` inside a value stays as it is)."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def fit_prompt(tokenizer, template: str, values: dict[str, str], main: str, max_input_tokens: int
               ) -> tuple[str, bool]:
    """The prompt, the `main` input cut so the whole prompt fits `max_input_tokens` (the question and the
    choices after it are kept); returns (prompt, whether anything was cut).

    Built by tokens: the template around the inputs is counted first (every value capped to what
    `max_input_tokens` can hold, so nothing unbounded is rendered or tokenized), then `main` is cut to the room
    left, on a token's end."""
    cap = input_cap(max_input_tokens)
    cut = len(values[main]) > cap
    values = {name: value[:cap] for name, value in values.items()}
    around = len(tokenizer.encode(render(template, {**values, main: ""}), add_special_tokens=False))
    room = max_input_tokens - around - 8   # a few tokens spare: pieces merge differently at the joins
    if room < 1:
        others = " and ".join(["the labels", *(f"the {f}" for f in values if f not in (main, "choices"))])
        raise UserError(f"The prompt template with {others} takes {around:,} of the model's {max_input_tokens} "
                        f"input tokens, leaving no room for the {main}: use fewer or shorter labels, or shorten "
                        "the template.")
    offsets = tokenizer(values[main], return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    if len(offsets) > room:
        values[main], cut = values[main][: offsets[room - 1][1]], True
    return render(template, values), cut


def label_tokens(tokenizer, names: list[str]) -> list[int]:
    """Each label's token count (its `</s>` included); a label over MAX_LABEL_TOKENS is a UserError."""
    counts = [len(tokenizer.encode(n)) for n in names]
    for name, n in zip(names, counts):
        if n > MAX_LABEL_TOKENS:
            raise UserError(f"The label {name[:40]!r}{'…' if len(name) > 40 else ''} is {n:,} tokens long; a label "
                            f"may have at most {MAX_LABEL_TOKENS} tokens: shorten it.")
    return counts


# ------------------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------------------
def classify_prompted(loaded: Loaded, inputs: Mapping[str, str], labels: str | list[str], template: str,
                      normalize: bool = False, fields: tuple[str, ...] = ("text",), separator: str = ", ",
                      max_input_tokens: int = MAX_INPUT_TOKENS) -> RankedClassification:
    """Scores every label as the answer to the template filled with `inputs` (rank classification)."""
    values = {f: require_text(inputs.get(f), f) for f in fields}
    names = parse_labels(labels)
    check_template(template, fields)
    needs_generation(loaded, "Rank classification")
    counts = label_tokens(loaded.tokenizer, names)
    values["choices"] = separator.join(names)
    prompt, truncated = fit_prompt(loaded.tokenizer, template, values, fields[0], max_input_tokens)
    loaded.afford(Work(f"{len(names)} labels × {max(counts)} tokens", 1, max_input_tokens, len(names), max(counts),
                       teacher_forced=True, shared_source=True), "use fewer or shorter labels.")
    scores = rank_choices(loaded.model, loaded.tokenizer, prompt, names, normalize, max_input_tokens)[0]
    probs = torch.softmax(scores.double(), -1)
    ranked = sorted(zip(names, probs.tolist(), scores.tolist()), key=lambda r: -r[1])
    return RankedClassification(ranked[0][0], {n: p for n, p, _ in ranked}, {n: s for n, _, s in ranked}, RANK,
                                prompt, bool(normalize), truncated)


def classify_checkpoint(loaded: Loaded, inputs: Mapping[str, str], labels: str | list[str], template: str,
                        normalize: bool = False, preset: Preset | None = None
                        ) -> Classification | RankedClassification:
    """The way the loaded checkpoint can classify: its classification head (its own labels; `labels` and
    `template` unused), else rank classification over `labels` with `template` (`preset` gives the input
    fields and how the choices are joined; the default preset when None)."""
    preset = preset or preset_named(None)
    if loaded.head == "classification":
        if "text" not in preset.fields:
            raise UserError("This checkpoint has a classification head, which reads one text: pick a one-text "
                            f"preset ({', '.join(p.title for p in load_presets().values() if 'text' in p.fields)})"
                            " or a text-to-text checkpoint for premise and hypothesis.")
        return classify(loaded, inputs.get("text", ""))
    return classify_prompted(loaded, inputs, labels, template, normalize, preset.fields, preset.separator)


def method_of(result: Classification | RankedClassification) -> str:
    """How the result was scored: "rank classification" or "classification head"."""
    return getattr(result, "method", HEAD)
