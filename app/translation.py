"""Translation: the source text and a target language in, the translation streamed out.

Two ways a checkpoint is told the target language, picked from its own vocabulary:
- MADLAD-400 (`google/madlad400-*-mt`) has a `<2xx>` token per language and reads `"<2de> source"`;
- a prompted text-to-text model (mT0) reads xP3's instruction, `"Translate to German: source"`.
A checkpoint with `<2xx>` tokens is asked only for a language whose token it has: any other target is refused
with a message, never translated into a language it was not told.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .assets import ASSETS
from .errors import UserError
from .models import Loaded
from .tasks import MAX_INPUT_TOKENS, Decoding, input_cap, preset_decoding, require_text, stream_generated

LANGUAGES_FILE = ASSETS / "languages.json"
REGISTRY_FILE = ASSETS / "models.json"
PROMPT = "Translate to {language}: {text}"   # xP3's translation instruction, as mT0 was trained on it
PROBE = "<2en>"                               # every MADLAD-style vocabulary has English


@dataclass(frozen=True)
class Language:
    name: str   # English name, as the page lists it and mT0's prompt says it
    code: str   # ISO 639-1 (else 639-3): MADLAD's <2code>

    @property
    def token(self) -> str:
        return f"<2{self.code}>"


@functools.cache
def languages(path: Path = LANGUAGES_FILE) -> tuple[Language, ...]:
    """The target languages the page offers (assets/languages.json), by name."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))["languages"]
    return tuple(Language(r["name"], r["code"]) for r in rows)


def language_named(target: str, known: tuple[Language, ...] | None = None) -> Language:
    """The language called `target` (its English name or its code, any case); a UserError otherwise."""
    known = known or languages()
    key = str(target or "").strip().casefold()
    if not key:
        raise UserError("Pick a target language.")
    for lang in known:
        if key in (lang.name.casefold(), lang.code.casefold()):
            return lang
    raise UserError(f"Unknown target language {str(target).strip()!r}: pick one from the list (English names "
                    f"such as German or Swahili, or codes such as de or sw).")


def token_id(tokenizer, piece: str) -> int | None:
    """The id of `piece` as one token of the vocabulary, or None when the vocabulary lacks it."""
    ids = tokenizer.convert_tokens_to_ids([piece])
    found = ids[0] if ids else None
    return None if found is None or found == tokenizer.unk_token_id else int(found)


def uses_language_tokens(tokenizer) -> bool:
    """Whether the checkpoint picks its target with `<2xx>` tokens (MADLAD-400)."""
    return token_id(tokenizer, PROBE) is not None


def translation_input(tokenizer, text: str, lang: Language, source_name: str = "this model") -> tuple[str, str]:
    """(the text the encoder reads, how the target is given: "<2de> token" or "prompt")."""
    if uses_language_tokens(tokenizer):
        if token_id(tokenizer, lang.token) is None:
            raise UserError(f"{source_name} has no {lang.token} token: it does not translate into {lang.name}. "
                            "Pick another target language, or a prompted model such as bigscience/mt0-base.")
        return f"{lang.token} {text}", f"{lang.token} token"
    return PROMPT.format(language=lang.name, text=text), "prompt"


def registry_decoding(path: Path = REGISTRY_FILE) -> dict | None:
    """The translation entry's decoding preset (for checkpoints that ship no length of their own, as mT0)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["tasks"]["translation"].get("decoding")


@dataclass
class Translation:
    text: str
    target: str                # the language's name
    code: str
    prompt: str                # what the encoder read
    method: str                # "<2de> token" or "prompt"
    truncated: bool
    input_tokens: int
    settings: dict[str, Any]
    done: bool = False


def stream_translation(loaded: Loaded, text: str, target: str, decoding: Decoding,
                       max_input_tokens: int = MAX_INPUT_TOKENS) -> Iterator[Translation]:
    """Yields the translation so far as tokens arrive (beam search: once, at the end); the last has done=True.
    Settings left empty take the checkpoint's defaults, or the registry's preset when it ships no length."""
    text = require_text(text)
    lang = language_named(target)
    prompt, method = translation_input(loaded.tokenizer, text[: input_cap(max_input_tokens)], lang,
                                       repr(loaded.request.source))
    if decoding == Decoding():
        decoding = preset_decoding(loaded.model.generation_config, registry_decoding())
    for part in stream_generated(loaded, prompt, decoding, "Translation", "a translation", max_input_tokens):
        yield Translation(part.text, lang.name, lang.code, prompt, method, part.truncated or len(text) > len(
            text[: input_cap(max_input_tokens)]), part.input_tokens, part.settings, part.done)
