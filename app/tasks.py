"""The app's work, as plain functions: a loaded model and text and settings in, a named result out.

No Gradio here: the tabs and the API endpoints are thin layers over these, and the tests call them directly.
Offsets are character offsets into the text the user gave.
"""
from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from model.textgen import CHARS_PER_TOKEN_CAP, MARKER, encode_inputs, fill_spans, stream_text

from .errors import UserError
from .limits import check_bounds, generation_work
from .models import Loaded

MAX_INPUT_TOKENS = 512
ADVICE = "use fewer beams or returned sequences, or fewer new tokens."


# ------------------------------------------------------------------------------------------------------------
# Input checks and decoding settings
# ------------------------------------------------------------------------------------------------------------
def require_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"The {what} is empty: type or paste some, or pick an example.")
    return text


def input_cap(max_input_tokens: int) -> int:
    """Characters worth tokenizing for `max_input_tokens` (beyond that, text is cut before tokenizing)."""
    return max_input_tokens * CHARS_PER_TOKEN_CAP


@dataclass
class Decoding:
    """The decoding settings the app exposes; None means "the checkpoint's own default"."""
    max_new_tokens: int | None = None
    num_beams: int | None = None
    no_repeat_ngram_size: int | None = None
    length_penalty: float | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    @classmethod
    def defaults_of(cls, model) -> "Decoding":
        """The loaded checkpoint's defaults (generation_config.json, else config.json)."""
        return cls.from_config(model.generation_config)

    @classmethod
    def from_config(cls, cfg) -> "Decoding":
        """From a `model.config.GenerationConfig`: the values the page is prefilled with."""
        values = {f.name: getattr(cfg, f.name, None) for f in dataclasses.fields(cls)}
        if values["max_new_tokens"] is None:
            values["max_new_tokens"] = max(1, cfg.total_length(1) - 1)   # what generate() would give
        return cls(**values)

    def kwargs(self) -> dict[str, Any]:
        """The settings given (not None), as `generate()` keyword arguments."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        for name in ("max_new_tokens", "num_beams", "no_repeat_ngram_size", "top_k", "seed"):
            if name in out:
                out[name] = int(out[name])
        if out.get("seed") is not None and out["seed"] < 0:
            out.pop("seed")
        return out


def ships_no_length(cfg) -> bool:
    """The checkpoint sets no decoding length of its own (no generation_config.json, no max_length in config.json,
    or transformers' 20-token default): mT0 is such a checkpoint, and would cut answers at 20 tokens."""
    return cfg.max_new_tokens is None and cfg.max_length in (None, 20)


def preset_decoding(cfg, preset: dict[str, Any] | None) -> Decoding:
    """The registry's decoding `preset` (assets/models.json "decoding") for a checkpoint that ships no length of
    its own (`ships_no_length`); otherwise nothing set, so the checkpoint's own defaults apply."""
    if not preset or not ships_no_length(cfg):
        return Decoding()
    return Decoding(**preset)


def check_decoding(model, decoding: Decoding) -> dict[str, Any]:
    """Validates the settings against the deployment's bounds (`limits.DECODING_BOUNDS`, the page's sliders)
    and the model's config; a bad value is a UserError naming it."""
    check_bounds(dataclasses.asdict(decoding))
    gen = decoding.kwargs()
    try:
        model.generation_config.updated(**gen).validate()
    except (ValueError, TypeError) as e:
        raise UserError(f"Invalid decoding settings: {e}") from e
    return gen


def require_head(loaded: Loaded, head: str, message: str) -> None:
    """Refuses a model loaded with another head than the task needs (asked of the load, not the model)."""
    if loaded.head != head:
        raise UserError(message)


def needs_generation(loaded: Loaded, what: str) -> None:
    require_head(loaded, "generation", f"{what} needs a text-to-text checkpoint (with a language-model head).")


# ------------------------------------------------------------------------------------------------------------
# Summarization
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Summary:
    text: str
    truncated: bool
    input_tokens: int
    settings: dict[str, Any]
    done: bool = False


def stream_summary(loaded: Loaded, text: str, decoding: Decoding,
                   max_input_tokens: int = MAX_INPUT_TOKENS) -> Iterator[Summary]:
    """Yields the summary so far as tokens arrive (beam search yields once, at the end); the last has done=True."""
    return stream_generated(loaded, text, decoding, "Summarization", "a summary", max_input_tokens)


def stream_generated(loaded: Loaded, text: str, decoding: Decoding, task: str, what: str,
                     max_input_tokens: int = MAX_INPUT_TOKENS) -> Iterator[Summary]:
    """The text `loaded` generates from `text`, so far, as tokens arrive; the last has done=True. `task` and
    `what` name the work in messages ("Summarization", "a summary")."""
    text = require_text(text)
    needs_generation(loaded, task)
    gen = check_decoding(loaded.model, decoding)
    enc = encode_inputs(loaded.tokenizer, text[: input_cap(max_input_tokens)], max_input_tokens)
    truncated = enc.truncated[0] or len(text) > input_cap(max_input_tokens)
    loaded.afford(generation_work(gen, 1, enc.num_tokens[0], what), ADVICE)
    out = ""
    # concurrent visitors of the same model and settings decode in one batch (the app context's batcher)
    stream = loaded.batcher.stream if loaded.batcher is not None else stream_text
    for piece in stream(loaded.model, loaded.tokenizer, text[: input_cap(max_input_tokens)], max_input_tokens,
                        **gen):
        out += piece
        yield Summary(out, truncated, enc.num_tokens[0], gen)
    yield Summary(out, truncated, enc.num_tokens[0], gen, done=True)


# ------------------------------------------------------------------------------------------------------------
# Span filling
# ------------------------------------------------------------------------------------------------------------
@dataclass
class SpanFill:
    text: str                                  # the input with every marker replaced by its span
    spans: list[dict[str, Any]]                # {marker, sentinel_id, text, start, end} (offsets in `text`)
    segments: list[tuple[str, str | None]]     # the filled text in pieces, spans labelled by their marker
    missing: list[str]
    extra: list[dict[str, Any]]
    raw: str                                   # the model's output, sentinels included
    truncated: bool
    settings: dict[str, Any]


def next_marker(text: str) -> str:
    """The marker to insert next: one past the highest `<extra_id_N>` in the text."""
    numbers = [int(n) for n in MARKER.findall(text or "")]
    return f"<extra_id_{max(numbers) + 1 if numbers else 0}>"


def fill(loaded: Loaded, text: str, decoding: Decoding, max_input_tokens: int = MAX_INPUT_TOKENS) -> SpanFill:
    """Fills every `<extra_id_N>` marker of `text`; spans come back with their sentinels and offsets."""
    text = require_text(text)
    needs_generation(loaded, "Span filling")
    if not MARKER.search(text):
        raise UserError("The text has no <extra_id_N> marker: put <extra_id_0> where the model should fill in "
                        "(the 'Insert next marker' button does it).")
    gen = check_decoding(loaded.model, decoding)
    loaded.afford(generation_work(gen, 1, max_input_tokens, "span filling"), ADVICE)
    try:
        filled = fill_spans(loaded.model, loaded.tokenizer, text[: input_cap(max_input_tokens)],
                            max_input_tokens, **gen)
    except (ValueError, KeyError) as e:
        raise UserError(f"Cannot fill these markers: {e}") from e
    by_marker = {s.marker: s for s in filled.spans}
    segments: list[tuple[str, str | None]] = []
    spans, out, pos = [], "", 0
    for m in MARKER.finditer(text[: input_cap(max_input_tokens)]):
        before = text[pos: m.start()]
        if before:
            segments.append((before, None))
        out += before
        span = by_marker[m.group(0)]
        shown = span.text or "∅"
        segments.append((shown, span.marker if span.text else f"{span.marker} (empty)"))
        spans.append({"marker": span.marker, "sentinel_id": span.sentinel_id, "text": span.text,
                      "start": len(out), "end": len(out) + len(span.text)})
        out += span.text
        pos = m.end()
    rest = text[pos: input_cap(max_input_tokens)]
    if rest:
        segments.append((rest, None))
    extra = [{"marker": s.marker, "sentinel_id": s.sentinel_id, "text": s.text} for s in filled.extra]
    return SpanFill(out + rest, spans, segments, filled.missing, extra, filled.raw,
                    filled.truncated or len(text) > input_cap(max_input_tokens), gen)


# ------------------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Classification:
    label: str
    probabilities: dict[str, float]    # every label, most probable first
    multi_label: bool
    truncated: bool


def label_names(config) -> list[str]:
    names = config.id2label or {}
    return [str(names.get(i, names.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels or 2)]


def classify(loaded: Loaded, text: str, max_input_tokens: int = MAX_INPUT_TOKENS) -> Classification:
    text = require_text(text)
    require_head(loaded, "classification", "Classification needs a checkpoint with a classification head.")
    enc = encode_inputs(loaded.tokenizer, text[: input_cap(max_input_tokens)], max_input_tokens,
                        loaded.model.device)
    with torch.no_grad():
        logits = loaded.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[0].float()
    multi = loaded.model.config.problem_type == "multi_label_classification"
    probs = torch.sigmoid(logits) if multi else torch.softmax(logits, -1)
    names = label_names(loaded.model.config)
    ranked = sorted(zip(names, probs.tolist()), key=lambda p: -p[1])
    return Classification(ranked[0][0], dict(ranked), multi,
                          enc.truncated[0] or len(text) > input_cap(max_input_tokens))


# ------------------------------------------------------------------------------------------------------------
# Token tagging
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Entity:
    text: str
    label: str
    score: float
    start: int
    end: int


@dataclass
class Tagging:
    entities: list[Entity]
    segments: list[tuple[str, str | None]]   # the whole input, tagged words labelled
    words: list[dict[str, Any]]              # every word: {text, label, score, start, end}
    rtl: bool
    truncated: bool


RTL_BIDI = {"R", "AL"}
UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def is_rtl(text: str) -> bool:
    """True when most letters are right-to-left (Arabic, Hebrew, Persian, Urdu, ...)."""
    letters = [c for c in text if c.isalpha()]
    rtl = sum(unicodedata.bidirectional(c) in RTL_BIDI for c in letters)
    return bool(letters) and rtl * 2 > len(letters)


def unspaced(char: str) -> bool:
    """Scripts written without spaces between words: each of their pieces is taken as its own word."""
    return any(s in unicodedata.name(char, "") for s in UNSPACED_SCRIPTS)


def group_words(text: str, offsets: list[tuple[int, int]]) -> list[list[int]]:
    """Token indices grouped into words: a new word starts after whitespace, at punctuation, or at every piece
    of a script written without spaces. Tokens with empty offsets (`</s>`) are left out."""
    words: list[list[int]] = []
    prev_end = None
    for i, (start, end) in enumerate(offsets):
        if end <= start or not text[start:end].strip():   # `</s>`, or a lone "▁" piece
            continue
        start, end = strip_span(text, start, end)
        first = text[start]
        boundary = (prev_end is None or start > prev_end or text[start - 1: start].isspace() or unspaced(first)
                    or unicodedata.category(first).startswith("P")
                    or unicodedata.category(text[prev_end - 1]).startswith("P"))
        if boundary or not words:
            words.append([i])
        else:
            words[-1].append(i)
        prev_end = end
    return words


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """The character range without the whitespace at its ends (pieces carry the space before a word)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def entity_type(label: str) -> tuple[str, str]:
    """('B'|'I'|'', type) of a BIO label; 'O' -> ('', 'O')."""
    if len(label) > 2 and label[1] in "-_" and label[0] in "BIES":
        return label[0], label[2:]
    return "", label


def tag(loaded: Loaded, text: str, max_input_tokens: int = MAX_INPUT_TOKENS) -> Tagging:
    """Tags every word (label of its first piece) and merges B-/I- runs into entities."""
    text = require_text(text)
    require_head(loaded, "token-classification", "Token tagging needs a checkpoint with a token-classification head.")
    cut = text[: input_cap(max_input_tokens)]
    enc = loaded.tokenizer(cut, return_offsets_mapping=True, return_tensors="pt", truncation=True,
                           max_length=max_input_tokens)
    with torch.no_grad():
        logits = loaded.model(input_ids=enc["input_ids"].to(loaded.model.device),
                              attention_mask=enc["attention_mask"].to(loaded.model.device)).logits[0].float()
    probs = torch.softmax(logits, -1)
    names = label_names(loaded.model.config)
    offsets = [tuple(o) for o in enc["offset_mapping"][0].tolist()]
    words = []
    for group in group_words(cut, offsets):
        start, end = strip_span(cut, offsets[group[0]][0], offsets[group[-1]][1])
        p, k = probs[group[0]].max(-1)
        words.append({"text": cut[start:end], "label": names[int(k)], "score": float(p), "start": start,
                      "end": end})
    entities = merge_entities(cut, words)
    covered = max((end for _, end in offsets), default=0)
    return Tagging(entities, highlight(text, [(e.start, e.end, e.label) for e in entities]), words,
                   is_rtl(text), len(text) > len(cut) or covered < len(cut.rstrip()))


def merge_entities(text: str, words: list[dict[str, Any]]) -> list[Entity]:
    """Consecutive words of one entity type become one entity (a B- label starts a new one); 'O' is dropped."""
    entities: list[Entity] = []
    scores: list[list[float]] = []
    for w in words:
        prefix, kind = entity_type(w["label"])
        if kind == "O":
            continue
        last = entities[-1] if entities else None
        joins = (last is not None and last.label == kind and prefix != "B" and not text[last.end: w["start"]].strip())
        if joins:
            last.end = w["end"]
            last.text = text[last.start: last.end]
            scores[-1].append(w["score"])
            last.score = sum(scores[-1]) / len(scores[-1])
        else:
            entities.append(Entity(w["text"], kind, w["score"], w["start"], w["end"]))
            scores.append([w["score"]])
    return entities


def highlight(text: str, marks: list[tuple[int, int, str]]) -> list[tuple[str, str | None]]:
    """The whole text as (piece, label or None) segments, the marked character ranges labelled."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    for start, end, label in sorted(marks):
        if start < pos:
            continue
        if start > pos:
            out.append((text[pos:start], None))
        out.append((text[start:end], label))
        pos = end
    if pos < len(text):
        out.append((text[pos:], None))
    return out


# ------------------------------------------------------------------------------------------------------------
# Question answering
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Answer:
    text: str
    score: float     # extractive: p(start) p(end); generative: the alignment's score (0 when not found)
    start: int       # character offsets in the context (-1 when not found in it)
    end: int
    how: str = "span"     # "span" (a QA head's) | "exact" | "normalized" | "fuzzy" | "token span" | "" (not found)
    found: bool = True    # the answer lies in the context at [start, end)


@dataclass
class QAResult:
    mode: str                                  # "extractive" | "generative"
    answer: Answer | None
    alternatives: list[Answer]
    segments: list[tuple[str, str | None]]     # the context with the answer highlighted
    truncated: bool
    settings: dict[str, Any] = field(default_factory=dict)
    method: str = "extractive head"            # | "generative" | "generative, constrained"
    prompt: str = ""                           # generative: what the encoder read


def require_qa(question: str, context: str) -> tuple[str, str]:
    require_text(question, "question")
    if not isinstance(context, str) or not context.strip():
        raise UserError("The question has no context: paste the passage the answer should be found in.")
    return question, context


def check_question(tokenizer, question: str, max_input_tokens: int) -> None:
    """Refuses a question longer than half the model's input: the context needs the rest, and truncating the
    context alone (`only_second`) cannot bring an over-long question within the input limit."""
    allowed = max_input_tokens // 2
    n = len(tokenizer(question[: input_cap(max_input_tokens)])["input_ids"])
    if n > allowed:
        raise UserError(f"The question is {n:,} tokens long; a question may take at most {allowed} of the "
                        f"model's {max_input_tokens} input tokens (the rest is for the context): shorten it.")


def answer_extractive(loaded: Loaded, question: str, context: str, top_k: int = 5, max_answer_tokens: int = 30,
                      max_input_tokens: int = MAX_INPUT_TOKENS) -> QAResult:
    """The best context spans by start x end probability (over the context's tokens only)."""
    question, context = require_qa(question, context)
    require_head(loaded, "question-answering", "Extractive answers need a checkpoint with a question-answering "
                 "head; for a text-to-text checkpoint pick 'generative'.")
    check_question(loaded.tokenizer, question, max_input_tokens)
    cap = input_cap(max_input_tokens)
    enc = loaded.tokenizer(question[:cap], context[:cap], return_offsets_mapping=True, return_tensors="pt",
                           truncation="only_second", max_length=max_input_tokens)
    ids = enc["input_ids"][0].tolist()
    if len(ids) > max_input_tokens:   # never reached after check_question; the model must never see more
        raise UserError(f"The question and context take {len(ids):,} tokens, over the model's "
                        f"{max_input_tokens}: shorten the question.")
    with torch.no_grad():
        out = loaded.model(input_ids=enc["input_ids"].to(loaded.model.device),
                           attention_mask=enc["attention_mask"].to(loaded.model.device))
    offsets = [tuple(o) for o in enc["offset_mapping"][0].tolist()]
    first_eos = ids.index(loaded.tokenizer.eos_token_id)
    in_context = [i for i in range(first_eos + 1, len(ids)) if offsets[i][1] > offsets[i][0]]
    if not in_context:
        raise UserError("The question fills the whole input, leaving no room for the context: shorten it.")
    answers = best_spans(out.start_logits[0].float(), out.end_logits[0].float(), in_context, offsets, context,
                         top_k, max_answer_tokens)
    if not answers:
        raise UserError("No answer span could be read from this context (it holds no words): give a longer context.")
    best = answers[0]
    truncated = offsets[in_context[-1]][1] < len(context.rstrip())
    return QAResult("extractive", best, answers[1:], highlight(context, [(best.start, best.end,
                    f"answer {best.score:.2f}")]), truncated)


def best_spans(start_logits, end_logits, positions: list[int], offsets, context: str, top_k: int,
               max_len: int) -> list[Answer]:
    """Top-k distinct (start <= end, at most max_len tokens) spans over `positions`, scored p(start) p(end)."""
    idx = torch.tensor(positions)
    p_start = torch.softmax(start_logits[idx], -1)
    p_end = torch.softmax(end_logits[idx], -1)
    scores = p_start[:, None] * p_end[None, :]
    n = len(positions)
    allowed = torch.ones(n, n).triu().tril(max_len - 1).bool()
    scores = scores.masked_fill(~allowed, -1.0).flatten()
    answers, seen = [], set()
    for flat in scores.argsort(descending=True).tolist():
        if len(answers) >= top_k or scores[flat] < 0:
            break
        s, e = divmod(flat, n)
        start, end = strip_span(context, offsets[positions[s]][0], offsets[positions[e]][1])
        if (start, end) in seen or start == end:
            continue
        seen.add((start, end))
        answers.append(Answer(context[start:end], float(scores[flat]), start, end))
    return answers


# ------------------------------------------------------------------------------------------------------------
# Misc
# ------------------------------------------------------------------------------------------------------------
def as_plain(obj: Any) -> Any:
    """Dataclasses (nested) as JSON-ready dicts and lists, for the API."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): as_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_plain(v) for v in obj]
    return obj

