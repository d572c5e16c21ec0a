"""Question answering the way the checkpoint can: a checkpoint with a question-answering head marks the answer
span (extractive, `tasks.answer_extractive`); a text-to-text one (mT0) writes the answer to an xP3 prompt
(`assets/prompts/qa.json`, editable), optionally constrained to runs of the passage's tokens
(`model.constraints`). A generated answer is aligned to its span in the passage with `app.align` (exact, then
normalized, then fuzzy) and highlighted there; one that is not found is flagged. Offsets are character offsets
into the context as given. No Gradio here: the QA tab and the /answer endpoint are thin layers over these.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import replace
from pathlib import Path

from model.constraints import context_span_constraint
from model.textgen import clean_ids, encode_inputs

from . import align
from .assets import ASSETS
from .errors import UserError
from .limits import MAX_TEMPLATE_CHARS, generation_work
from .models import Loaded
from .tasks import (MAX_INPUT_TOKENS, Answer, Decoding, QAResult, answer_extractive, check_decoding, check_question,
                    highlight, input_cap, needs_generation, preset_decoding, require_qa, strip_span)

TEMPLATE_FILE = ASSETS / "prompts" / "qa.json"
REGISTRY_FILE = ASSETS / "models.json"
PLACEHOLDER = re.compile(r"\{(context|question)\}")
EXTRACTIVE, GENERATIVE, CONSTRAINED = "extractive head", "generative", "generative, constrained"
NOT_FOUND = "not found in the passage"
TOKEN_SPAN = "token span"   # a constrained answer whose decoded text align could not place: its tokens' offsets


@functools.cache
def default_template(path: Path = TEMPLATE_FILE) -> str:
    """xP3's extractive-QA prompt (read once, when first asked for)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["template"]


def registry_decoding(path: Path = REGISTRY_FILE) -> dict | None:
    """The question-answering entry's decoding preset in the model registry (for checkpoints that ship no length
    of their own, as mT0: `tasks.preset_decoding`)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["tasks"]["question_answering"].get("decoding")


def check_template(template: str | None) -> str:
    """The template must hold {context} and {question}, once each at most."""
    if not isinstance(template, str) or not template.strip():
        raise UserError("The prompt template is empty: write one with {context} where the passage goes and "
                        "{question} where the question goes (clear the box to get the default back).")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise UserError(f"The prompt template is {len(template):,} characters long; at most {MAX_TEMPLATE_CHARS:,} "
                        "are allowed: put the passage in the Context box, not in the template.")
    used = PLACEHOLDER.findall(template)
    for name in ("context", "question"):
        if name not in used:
            raise UserError(f"The prompt template has no {{{name}}} placeholder: put {{{name}}} where the {name} "
                            "goes, e.g. " + json.dumps(default_template()))
        if used.count(name) > 1:
            raise UserError(f"The prompt template holds {{{name}}} {used.count(name)} times: use it once.")
    return template


def render(template: str, question: str, context: str) -> str:
    """The template filled in one pass (a `{…}` inside the question or context stays as it is)."""
    return PLACEHOLDER.sub(lambda m: {"context": context, "question": question}[m.group(1)], template)


def fit_context(tokenizer, template: str, question: str, context: str, max_input_tokens: int) -> tuple[str, bool]:
    """The longest prefix of `context` (cut on a token's end) with which the prompt, `</s>` included, fits
    `max_input_tokens`: the question and the template's instruction are kept whole. Returns (prefix, cut?); offsets
    into the prefix are offsets into `context`."""
    cap = input_cap(max_input_tokens)
    passage = context[:cap]
    over = len(tokenizer.encode(render(template, question, passage), add_special_tokens=False)) + 1 - max_input_tokens
    if over <= 0:
        return passage, len(context) > cap
    offsets = tokenizer(passage, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    keep = len(offsets) - over - 8   # a few tokens spare: pieces merge differently at the cut
    if keep < 1:
        raise UserError("The question and the prompt template leave no room for the passage in the model's "
                        f"{max_input_tokens} input tokens: shorten the question or the template.")
    return passage[: offsets[keep - 1][1]], True


def locate(passage: str, text: str, tokenizer, run: list[int] | None) -> Answer:
    """`text` as the model wrote it, with where it lies in `passage` (passage[start:end]): `align.best` (exact,
    normalized, fuzzy); for a constrained answer that align cannot place (a character split over byte pieces),
    the offsets of its token run. Not found: start = end = -1, found False."""
    match = align.best(passage, text) if text.strip() else None
    if match is not None:
        return Answer(text, match.score, match.start, match.end, match.how, True)
    if run:
        enc = tokenizer(passage, return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        for i in range(len(ids) - len(run) + 1):
            if ids[i: i + len(run)] == run:
                start, end = strip_span(passage, offsets[i][0], offsets[i + len(run) - 1][1])
                if end > start:
                    return Answer(text, 1.0, start, end, TOKEN_SPAN, True)
                break
    return Answer(text, 0.0, -1, -1, "", False)


def answer_generative(loaded: Loaded, question: str, context: str, decoding: Decoding | None = None,
                      template: str | None = None, constrained: bool = False,
                      max_input_tokens: int = MAX_INPUT_TOKENS) -> QAResult:
    """A text-to-text checkpoint answers `template` ({context}, {question}; None: xP3's); with `constrained` it
    can only write a run of the passage's tokens. `decoding` None: the checkpoint's own defaults, or the
    registry's preset when it ships no length (mT0). The context is cut (never the question) to fit the input."""
    question, context = require_qa(question, context)
    template = check_template(default_template() if template is None or not template.strip() else template)
    needs_generation(loaded, "Generative answers")
    check_question(loaded.tokenizer, question, max_input_tokens)
    preset = preset_decoding(loaded.model.generation_config, registry_decoding())
    given = {k: v for k, v in vars(decoding or Decoding()).items() if v is not None}
    gen = check_decoding(loaded.model, replace(preset, **given))
    passage, cut = fit_context(loaded.tokenizer, template, question.strip(), context, max_input_tokens)
    prompt = render(template, question.strip(), passage.strip())
    tok = loaded.tokenizer
    kwargs = {**gen, "num_return_sequences": 1}
    if constrained:
        kwargs["prefix_allowed_tokens_fn"] = context_span_constraint(
            tok.encode(passage, add_special_tokens=False), tok.eos_token_id,
            loaded.model.generation_config.decoder_start_token_id)
    enc = encode_inputs(tok, prompt, max_input_tokens, loaded.model.device)
    loaded.afford(generation_work(kwargs, 1, enc.num_tokens[0], "an answer"), "use fewer beams or new tokens.")
    run = clean_ids(tok, loaded.model.generate(enc.input_ids, enc.attention_mask, **kwargs)[0, 1:])
    answer = locate(passage, tok.decode(run).strip(), tok, run if constrained else None)
    marks = [(answer.start, answer.end, "answer")] if answer.found else []
    return QAResult("generative", answer, [], highlight(context, marks), cut,
                    {**gen, "template": template, "constrained": bool(constrained)},
                    CONSTRAINED if constrained else GENERATIVE, prompt)


def answer_checkpoint(loaded: Loaded, question: str, context: str, decoding: Decoding | None = None,
                      template: str | None = None, constrained: bool = False, top_k: int = 5) -> QAResult:
    """The way the loaded checkpoint can answer: its question-answering head (extractive; `template`,
    `constrained` and `decoding` unused), else generatively with `template`."""
    if loaded.head == "question-answering":
        return answer_extractive(loaded, question, context, top_k=top_k)
    return answer_generative(loaded, question, context, decoding, template, constrained)


def status_line(result: QAResult, source: str) -> tuple[str, str]:
    """(message, kind) for the status line: the answer, which way it was found, and where it lies."""
    cut = (" The passage was cut to fit the model's input limit (the question and the instruction were kept)."
           if result.truncated else "")
    a = result.answer
    if result.method == EXTRACTIVE:
        return (f"Answer score {a.score:.3f} — extractive head of {source}.{cut}", "warn" if cut else "info")
    how = "constrained to runs of the passage" if result.method == CONSTRAINED else "free generation"
    if not a.found:
        shown = repr(a.text) if a.text else "an empty answer"
        return f"Generated {shown} ({how}, {source}): {NOT_FOUND}.{cut}", "warn"
    where = f"{a.how} match" + (f", similarity {a.score:.2f}" if a.how == align.FUZZY else "")
    return (f"Generated answer found in the passage at characters {a.start}–{a.end} ({where}; {how}, {source})."
            f"{cut}", "warn" if cut or a.how == align.FUZZY else "info")
