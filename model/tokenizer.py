"""mT5 / UMT5 tokenizer on the `sentencepiece` library, equal to transformers 4.57's slow `T5Tokenizer`.

Encoding follows `T5Tokenizer` with its default `legacy=True` (what a plain `from_pretrained` gives for the Hub's
mT5 and UMT5 repos, whose configs carry no `legacy` key), or its `legacy=False` rules when tokenizer_config.json or
a keyword says so (no dummy-prefix `▁` after a special token): the text is split on the *added* tokens (`<pad>`,
`</s>`, `<unk>`, UMT5's `<extra_id_N>`), honouring their `lstrip`/`rstrip` flags, and every other piece of text is
encoded by SentencePiece on its own, dummy-prefix `▁` included. `</s>` ends every text; a pair is `a </s> b </s>`.

One deliberate difference: a `<extra_id_N>` marker always becomes its sentinel id, whatever the spacing around it.
mT5's sentinels are pieces *inside* spiece.model named `▁<extra_id_N>` (USER_DEFINED, with the leading `▁`), so
SentencePiece only finds them after a space: transformers turns `foo<extra_id_0>bar` into `<`, `extra`, `_id` ...
We give such a glued marker the space it needs, so it maps to the sentinel and the text after it is encoded as it
is (no dummy prefix), as in `foo <extra_id_0>bar`. Spaced markers (`Hello <extra_id_0> world`) get exactly
transformers' ids. UMT5's sentinels are added tokens, found wherever they are, as transformers does.

Decoding reproduces `T5Tokenizer.decode` (special tokens, added tokens, byte-fallback pieces, the clean-up of
spaces before punctuation). Offsets (`return_offsets_mapping=True`, which the slow tokenizer lacks) are character
spans in the original text, from SentencePiece's own alignment.

A repo with only `tokenizer.json` (what transformers 5 saves) gets `MT5TokenizerFast`, on the `tokenizers`
library, equal to transformers 4.57's `T5TokenizerFast`; `MT5Tokenizer.from_pretrained` returns it for such a repo.
Both share `TokenizerBase`, the backend-independent part (batches, truncation, padding, tensors, sentinels).
"""
import difflib
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2, sentencepiece_pb2
from tokenizers import AddedToken as AddedTokenJson
from tokenizers import Tokenizer

from .hub import CheckpointNotFoundError, resolve_file

SPIECE_UNDERLINE = "▁"
MARKER = re.compile(r"<extra_id_(\d+)>")
LANGUAGE_TOKEN = re.compile(r"<2([^<>\s]+)>")  # MADLAD-400's target-language tokens: <2de>, <2zh_Latn>, ...
# transformers' "no limit" model_max_length, and the bound above which it refuses to truncate or pad to it.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)
OPTIONAL_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json")
_USER_DEFINED = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
_BYTE = sentencepiece_model_pb2.ModelProto.SentencePiece.BYTE


@dataclass(frozen=True)
class AddedToken:
    """A token outside SentencePiece's segmentation, as transformers' `AddedToken` (same field names).

    `lstrip`/`rstrip` make the token swallow the whitespace on its left/right when encoding. `single_word` is
    kept for saving but not applied (no mT5/UMT5 repo sets it).
    """
    content: str
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = False
    special: bool = False

    @classmethod
    def from_json(cls, value) -> "AddedToken":
        """Reads the dict form used by tokenizer_config.json and tokenizer.json, or a plain string."""
        if isinstance(value, str):
            return cls(value)
        fields = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in value}
        return cls(value["content"], **{k: bool(v) for k, v in fields.items()})


class BatchEncoding(dict):
    """The encoder's output: a dict (`input_ids`, `attention_mask`, ...) whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device) -> "BatchEncoding":
        """Moves the tensors to `device` (lists stay as they are); returns self."""
        for key, value in self.items():
            if hasattr(value, "to"):
                self[key] = value.to(device)
        return self


@dataclass
class _Settings:
    """What the tokenizer files say, after transformers' rules for merging them; field names are the keyword
    arguments of `T5Tokenizer.__init__` (and of `from_pretrained`, which overrides the files with them)."""
    added_tokens_decoder: dict = field(default_factory=dict)  # id -> AddedToken, in transformers' build order
    additional_special_tokens: list | None = None
    eos_token: str = "</s>"
    unk_token: str = "<unk>"
    pad_token: str = "<pad>"
    extra_ids: int | None = None
    model_max_length: int = VERY_LARGE_INTEGER
    clean_up_tokenization_spaces: bool = False
    add_prefix_space: bool = True
    legacy: bool | None = None
    padding_side: str = "right"
    truncation_side: str = "right"

    @classmethod
    def merged(cls, base: "_Settings | None", overrides: dict) -> "_Settings":
        """`base` with the keyword arguments a caller gave; other transformers kwargs are accepted and ignored."""
        values = asdict(base) if base else {}
        if base:
            values["added_tokens_decoder"] = dict(base.added_tokens_decoder)  # asdict turned tokens into dicts
        names = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key in names:
                values[key] = _token_text(value, None) if key.endswith("_token") else value
        added = values.get("added_tokens_decoder") or {}
        values["added_tokens_decoder"] = {int(i): t if isinstance(t, AddedToken) else AddedToken.from_json(t)
                                          for i, t in added.items()}
        if values.get("additional_special_tokens") is not None:
            values["additional_special_tokens"] = [_token_text(t, None) for t in values["additional_special_tokens"]]
        return cls(**values)


RETURN_TENSORS = (None, "pt", "np")


class TokenizerBase:
    """The backend-independent half of our tokenizers: transformers' `__call__` (batches, pairs, targets,
    truncation, `</s>`, padding, tensors, offsets), `batch_decode`, special-token ids and sentinel lookups.

    A backend supplies `_encode_text` (one text -> [(id, (start, end))], no `</s>`), `_token_to_id`,
    `_id_to_token`, `vocab_size`, `__len__`, `get_vocab`, `convert_tokens_to_string`, `decode` and
    `save_pretrained`, and sets `eos_token`, `unk_token`, `pad_token`, `model_max_length`, `padding_side`,
    `additional_special_tokens`, `_sentinels` (n -> id) and `_special_id_set`.
    """

    model_input_names = ["input_ids", "attention_mask"]

    # ------------------------------------------------------------------ vocabulary

    @property
    def pad_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.pad_token)

    @property
    def eos_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.eos_token)

    @property
    def unk_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.unk_token)

    def sentinel_id(self, n: int) -> int:
        """Id of `<extra_id_{n}>` (mT5: 250099 - n; UMT5: read from the files)."""
        if n not in self._sentinels:
            raise ValueError(f"this tokenizer has no <extra_id_{n}>: it has {len(self._sentinels)} sentinels")
        return self._sentinels[n]

    @property
    def sentinel_ids(self) -> frozenset:
        return frozenset(self._sentinels.values())

    def is_sentinel(self, token_id: int) -> bool:
        return int(token_id) in self.sentinel_ids

    def get_sentinel_tokens(self) -> list:
        """transformers' `get_sentinel_tokens`: the additional special tokens, each once.

        Its regex filter keeps every token (`bool(...) is not None` is always true), so mT5 (whose sentinels are
        pieces, not additional special tokens) gets `[]` and a user's own additional tokens are listed too; its
        order is a set's (changes from run to run), ours the order of `additional_special_tokens`. For the real
        sentinels use `sentinel_id(n)` / `sentinel_ids`.
        """
        return list(dict.fromkeys(self.additional_special_tokens))

    def get_sentinel_token_ids(self) -> list:
        """Ids of `get_sentinel_tokens()`, in the same order."""
        return [self.convert_tokens_to_ids(t) for t in self.get_sentinel_tokens()]

    def convert_tokens_to_ids(self, tokens):
        """Token string(s) -> id(s).

        Unlike transformers, the name `<extra_id_N>` also finds mT5's sentinel piece `▁<extra_id_N>`.
        """
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """Id(s) -> token string(s)."""
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            return self._id_to_token(int(ids))
        ids = _as_id_list(ids)
        return [self._id_to_token(i) for i in ids if not (skip_special_tokens and i in self._special_id_set)]

    # ------------------------------------------------------------------ encoding

    def tokenize(self, text: str) -> list:
        """The token strings of `text` (no `</s>`)."""
        return self.convert_ids_to_tokens([i for i, _ in self._encode_text(text)])

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, padding=False,
               truncation=None, max_length=None, return_tensors=None, **kwargs):
        """Ids of one text (or pair), `</s>` included: `self(text, ...)["input_ids"]` (a (1, T) tensor with
        `return_tensors`). Other keyword arguments (`pad_to_multiple_of`, `padding_side`) go to `__call__`."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                    max_length=max_length, return_tensors=return_tensors, **kwargs)["input_ids"]

    def encode_plus(self, text: str, text_pair: str | None = None, **kwargs) -> BatchEncoding:
        """`__call__` on one text (or pair): the same keyword arguments and result."""
        if not isinstance(text, str) or not (text_pair is None or isinstance(text_pair, str)):
            raise TypeError("encode_plus takes one text (and optionally one text_pair) as str; call the "
                            "tokenizer itself for a batch")
        return self(text, text_pair, **kwargs)

    # ------------------------------------------------------------------ batches

    def __call__(self, text=None, text_pair=None, text_target=None, *, padding=False, truncation=None,
                 max_length=None, pad_to_multiple_of=None, return_tensors=None, return_offsets_mapping=False,
                 add_special_tokens=True, padding_side=None, return_attention_mask=None) -> BatchEncoding:
        """Encodes a text or a batch (list) of texts, optionally pairs and targets.

        padding: False | True/"longest" (to the longest row) | "max_length"; `pad_to_multiple_of` rounds the
        padded length up. truncation: None/False | True/"longest_first" | "only_first" | "only_second"; it keeps
        room for `</s>`. As in transformers, `max_length` without `padding`/`truncation` truncates
        (longest_first). Returns `input_ids`, `attention_mask`, `offset_mapping` on request ((0, 0) for `</s>`
        and padding), and `labels` (the target ids, padded with pad id) when `text_target` is given. A single
        string gives flat lists, or (1, T) tensors with return_tensors="pt" (torch.long) or "np" (int64).
        `return_attention_mask=False` leaves `attention_mask` out. Truncation cuts from `self.truncation_side`.
        """
        if text is None and text_target is None:
            raise ValueError("give `text` or `text_target`")
        _check_tensor_kind(return_tensors)
        padding_side = self.padding_side if padding_side is None else padding_side
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
        if self.truncation_side not in ("right", "left"):
            raise ValueError(f"truncation_side must be 'right' or 'left', not {self.truncation_side!r}")
        plan = (*self._strategies(padding, truncation, max_length, pad_to_multiple_of), pad_to_multiple_of)
        options = dict(plan=plan, add_special_tokens=add_special_tokens, return_tensors=return_tensors,
                       return_offsets_mapping=return_offsets_mapping, padding_side=padding_side)
        targets = self._encode_batch(text_target, None, **options) if text_target is not None else None
        encoded = targets if text is None else self._encode_batch(text, text_pair, **options)
        if text is not None and targets is not None:
            encoded["labels"] = targets["input_ids"]
        if return_attention_mask is False:
            encoded.pop("attention_mask")
        return encoded

    def batch_encode_plus(self, batch_text_or_text_pairs, **kwargs) -> BatchEncoding:
        """transformers' older batch call: a list of texts, or of (text, text_pair) pairs; `__call__`'s keyword
        arguments and result."""
        items = list(batch_text_or_text_pairs)
        if items and all(isinstance(item, (tuple, list)) for item in items):
            return self([a for a, _ in items], [b for _, b in items], **kwargs)
        return self(items, **kwargs)

    def _strategies(self, padding, truncation, max_length, pad_to_multiple_of=None) -> tuple:
        """(padding mode, truncation mode, max_length) by `PreTrainedTokenizerBase`'s rules."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        pad = _mode(padding, {True: "longest", False: None, "do_not_pad": None, "longest": "longest",
                              "max_length": "max_length"}, "padding")
        trunc = _mode(truncation, {True: "longest_first", False: None, None: None, "do_not_truncate": None,
                                   "longest_first": "longest_first", "only_first": "only_first",
                                   "only_second": "only_second"}, "truncation")
        if max_length is None:
            # No limit given: use model_max_length, unless it is transformers' "unlimited" placeholder.
            huge = self.model_max_length > LARGE_INTEGER
            if pad == "max_length":
                pad, max_length = (None, None) if huge else (pad, self.model_max_length)
            if trunc:
                trunc, max_length = (None, max_length) if huge else (trunc, self.model_max_length)
        if trunc and pad and pad_to_multiple_of and max_length is not None and max_length % pad_to_multiple_of:
            raise ValueError(f"Truncation and padding are both activated but truncation length ({max_length}) is "
                             f"not a multiple of pad_to_multiple_of ({pad_to_multiple_of}).")
        return pad, trunc, max_length

    def _encode_batch(self, text, text_pair, plan, add_special_tokens, return_tensors, return_offsets_mapping,
                      padding_side) -> BatchEncoding:
        """Encodes, truncates, pads and packs one side (inputs or targets) of a call."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if text_pair is None:
            pairs = [None] * len(texts)
        else:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
        pad, trunc, max_length, multiple = plan
        rows = [self._prepare(self._encode_text(a), None if b is None else self._encode_text(b),
                              trunc, max_length, add_special_tokens) for a, b in zip(texts, pairs)]
        rows = self._pad(rows, pad, max_length, padding_side, multiple)
        out = BatchEncoding(input_ids=[[i for i, _, _ in r] for r in rows],
                            attention_mask=[[m for _, _, m in r] for r in rows])
        if return_offsets_mapping:
            out["offset_mapping"] = [[o for _, o, _ in r] for r in rows]
        if return_tensors:
            return _to_tensors(out, return_tensors)
        if single:
            out = BatchEncoding({k: v[0] for k, v in out.items()})
        return out

    def _prepare(self, first: list, second, trunc, max_length, add_special_tokens: bool) -> list:
        """Truncates a text (or pair) of [(id, offset)] and appends `</s>`: [(id, offset, mask)]."""
        n_special = (1 if second is None else 2) if add_special_tokens else 0
        total = len(first) + len(second or []) + n_special
        if trunc and max_length and total > max_length:
            if self.truncation_side == "left":   # the same cut, counted from each text's start
                flip = lambda row: None if row is None else row[::-1]  # noqa: E731
                first, second = map(flip, self._truncate_pair(flip(first), flip(second), total - max_length, trunc))
            else:
                first, second = self._truncate_pair(first, second, total - max_length, trunc)
        if add_special_tokens:
            first = self._add_eos(first)
            second = None if second is None else self._add_eos(second)
        return [(i, o, 1) for i, o in first + (second or [])]

    def _truncate_pair(self, first: list, second, n: int, strategy: str) -> tuple:
        """Removes n tokens from a text (or pair) by the slow tokenizer's rules (`_truncate`)."""
        return _truncate(first, second, n, strategy)

    def _add_eos(self, encoded: list) -> list:
        """Appends `</s>` unless the text already ends with it (T5Tokenizer's `_add_eos_if_not_present`)."""
        if encoded and encoded[-1][0] == self.eos_token_id:
            warnings.warn(f"This sequence already has {self.eos_token}: not adding another", stacklevel=2)
            return encoded
        return encoded + [(self.eos_token_id, (0, 0))]

    def _pad(self, rows: list, pad, max_length, side: str, multiple=None) -> list:
        """Pads rows of [(id, offset, mask)] to the longest row or to max_length, rounded up to a multiple of
        `multiple` (never cuts)."""
        if pad is None or not rows:
            return rows
        target = _round_up(max(map(len, rows)) if pad == "longest" else max_length, multiple)
        filler = (self.pad_token_id, (0, 0), 0)
        padded = []
        for row in rows:
            extra = [filler] * max(0, target - len(row))
            padded.append(row + extra if side == "right" else extra + row)
        return padded

    def pad(self, encoded_inputs, padding=True, max_length=None, pad_to_multiple_of=None, padding_side=None,
            return_attention_mask=None, return_tensors=None, verbose: bool = True) -> BatchEncoding:
        """Pads encodings already made, as `PreTrainedTokenizerBase.pad`.

        encoded_inputs: a BatchEncoding or dict of one row (flat lists) or of a batch (lists of lists, or
        tensors/arrays, whose kind then becomes the default `return_tensors`), or a list of such dicts.
        Pads `input_ids` with pad id, `attention_mask` (made if absent) with 0, `token_type_ids` with 0 and
        `special_tokens_mask` with 1; other keys (`labels`, ...) are left as they are. `verbose` is accepted
        for compatibility.
        """
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            encoded_inputs = {key: [example[key] for example in encoded_inputs] for key in encoded_inputs[0]}
        if "input_ids" not in encoded_inputs:
            raise ValueError("You should supply an encoding or a list of encodings to this method that includes "
                             f"input_ids, but you provided {list(encoded_inputs.keys())}")
        ids = encoded_inputs["input_ids"]
        if ids is None or len(ids) == 0:
            if return_attention_mask:
                encoded_inputs["attention_mask"] = []
            return encoded_inputs
        return_attention_mask = True if return_attention_mask is None else return_attention_mask
        inputs, kind = _as_python_lists(encoded_inputs)
        return_tensors = kind if return_tensors is None else return_tensors
        _check_tensor_kind(return_tensors)
        pad, _, max_length = self._strategies(padding, None, max_length)
        side = self.padding_side if padding_side is None else padding_side
        options = dict(max_length=max_length, multiple=pad_to_multiple_of, side=side,
                       return_attention_mask=return_attention_mask)
        if inputs["input_ids"] and not isinstance(inputs["input_ids"][0], (list, tuple)):
            return _to_tensors(BatchEncoding(self._pad_one(inputs, pad, **options)), return_tensors, batch=False)
        n = len(inputs["input_ids"])
        if any(len(v) != n for v in inputs.values()):
            raise ValueError("Some items in the output dictionary have a different batch size than others.")
        if pad == "longest":
            pad, options["max_length"] = "max_length", max(len(row) for row in inputs["input_ids"])
        out = BatchEncoding()
        for i in range(n):
            for key, value in self._pad_one({k: v[i] for k, v in inputs.items()}, pad, **options).items():
                out.setdefault(key, []).append(value)
        return _to_tensors(out, return_tensors)

    def _pad_one(self, row: dict, pad, max_length, multiple, side, return_attention_mask) -> dict:
        """One example's lists padded: transformers' `_pad`."""
        row = dict(row)
        ids = list(row["input_ids"])
        target = _round_up(len(ids) if pad == "longest" else max_length, multiple)
        if return_attention_mask and "attention_mask" not in row:
            row["attention_mask"] = [1] * len(ids)
        if pad is None or target is None or len(ids) == target:
            return row
        fill = {"input_ids": self.pad_token_id, "token_type_ids": 0, "special_tokens_mask": 1}
        if return_attention_mask:
            fill["attention_mask"] = 0
        for key, value in fill.items():
            if key in row:
                extra = [value] * (target - len(row[key]) if key == "input_ids" else target - len(ids))
                row[key] = list(row[key]) + extra if side == "right" else extra + list(row[key])
        return row

    # ------------------------------------------------------------------ target language (MADLAD-400)

    def language_tokens(self) -> dict:
        """code -> id of every `<2xx>` target-language token in the vocabulary (MADLAD-400: `<2de>` -> "de");
        {} for tokenizers without them (mT5, Flan-T5). Read from the vocabulary once."""
        if getattr(self, "_language_tokens", None) is None:
            self._language_tokens = {m.group(1): i for token, i in self.get_vocab().items()
                                     if (m := LANGUAGE_TOKEN.fullmatch(token))}
        return self._language_tokens

    def with_target_language(self, text, language: str):
        """`<2xx> text`: MADLAD-400 picks the language to translate into from a token prefixed to the source.

        text: a str or a list of them; language: a code ("de", "zh_Latn") or its token ("<2de>"). Raises
        ValueError naming the codes to use when the tokenizer has no such token.
        """
        code = LANGUAGE_TOKEN.fullmatch(language).group(1) if LANGUAGE_TOKEN.fullmatch(language) else language
        known = self.language_tokens()
        if not known:
            raise ValueError("this tokenizer has no <2xx> target-language tokens, so its model is not "
                             "MADLAD-400-style: for mT0 and other prompted models, put the instruction in the text "
                             "(\"Translate to German: ...\")")
        if code not in known:
            close = difflib.get_close_matches(code, known, n=3)
            raise ValueError(f"{language!r} is not a target language of this tokenizer"
                             f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}: it knows "
                             f"{len(known)} codes, e.g. {', '.join(sorted(known)[:8])}. The codes are its <2xx> "
                             "tokens: list them with tokenizer.language_tokens(); the model card names the languages")
        prefix = f"<2{code}> "
        return prefix + text if isinstance(text, str) else [prefix + t for t in text]

    # ------------------------------------------------------------------ decoding

    def batch_decode(self, sequences, **kwargs) -> list:
        """`decode` for each row of a list of id lists or a 2-D tensor."""
        return [self.decode(row, **kwargs) for row in _as_rows(sequences)]


class MT5Tokenizer(TokenizerBase):
    """SentencePiece tokenizer for mT5 and UMT5 checkpoints with a transformers-like API.

    Build it with `MT5Tokenizer.from_pretrained(repo_id_or_dir)`. Ids: pad 0, eos 1, unk 2 (read from the files).
    """

    def __init__(self, vocab_file, **kwargs):
        """`vocab_file`: a spiece.model. Keyword arguments as `T5Tokenizer`'s: `eos_token`, `unk_token`,
        `pad_token`, `extra_ids` (default: 0 when the model holds sentinel pieces, else 100, invented at
        len(spiece) - 1 + extra_ids - i as transformers does), `additional_special_tokens`, `legacy`,
        `add_prefix_space`, `model_max_length`, `clean_up_tokenization_spaces`, `padding_side`,
        `added_tokens_decoder` (id -> AddedToken); others transformers accepts (`sp_model_kwargs`, ...) are
        ignored."""
        self.vocab_file = Path(vocab_file)
        model_bytes = self.vocab_file.read_bytes()
        settings = _Settings.merged(kwargs.pop("_settings", None), kwargs)
        self.legacy = settings.legacy is not False
        try:
            proto = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except Exception as err:  # protobuf DecodeError, RuntimeError from sentencepiece
            raise ValueError(f"{self.vocab_file} is not a SentencePiece model ({err}); "
                             "expected the `spiece.model` file of an mT5/UMT5 repo") from err
        self._model_bytes = model_bytes  # what save_pretrained writes, so it needs no file left behind
        self._sp_size = self._sp.get_piece_size()
        if not self.legacy:
            # transformers' non-legacy processor: SentencePiece adds no dummy prefix; tokenize() adds its own.
            proto.normalizer_spec.add_dummy_prefix = False
            self._sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self._dummy_prefix = proto.normalizer_spec.add_dummy_prefix
        self._model_sentinels = self._find_model_sentinels(proto)
        self._sp_encode = self._encoding_processor(proto)
        self.model_max_length = settings.model_max_length
        self.clean_up_tokenization_spaces = settings.clean_up_tokenization_spaces
        self.add_prefix_space = settings.add_prefix_space
        self.padding_side = settings.padding_side
        self.truncation_side = settings.truncation_side
        self.eos_token, self.unk_token, self.pad_token = settings.eos_token, settings.unk_token, settings.pad_token
        self._unk_token_length = len(self._sp.encode(self.unk_token))
        self._build_added_tokens(settings)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, repo_id_or_dir, revision=None, token=None, cache_dir=None,
                        local_files_only: bool = False, **kwargs) -> "MT5Tokenizer | MT5TokenizerFast":
        """Loads from a local folder or a Hub repo (through the huggingface_hub cache; honours HF_HUB_OFFLINE).

        Reads `spiece.model` and, when present, tokenizer_config.json, special_tokens_map.json,
        added_tokens.json and tokenizer.json (only its "added_tokens"). Keyword arguments (those of `__init__`:
        `additional_special_tokens`, `eos_token`, `legacy`, `model_max_length`, ...) override the files, as in
        transformers. A repo without spiece.model but with tokenizer.json gives an `MT5TokenizerFast`. A
        checkpoint with neither uses the tokenizer of the base model its config.json names (`_name_or_path`)
        when that one is available, else says what to pass.
        """
        files = _resolve_files(str(repo_id_or_dir), revision, token, cache_dir, local_files_only)
        if files["spiece.model"] is None:
            return MT5TokenizerFast.from_files(files, **kwargs)
        return cls(files["spiece.model"], _settings=_read_settings(files), **kwargs)

    def _find_model_sentinels(self, proto) -> dict:
        """Sentinels that are pieces of the model itself (mT5): n -> (id, piece name)."""
        found = {}
        for i, piece in enumerate(proto.pieces):
            if "<extra_id_" in piece.piece:
                match = MARKER.fullmatch(piece.piece.removeprefix(SPIECE_UNDERLINE))
                if match:
                    found.setdefault(int(match.group(1)), (i, piece.piece))
        return found

    def _encoding_processor(self, proto) -> spm.SentencePieceProcessor:
        """The processor used to encode: the model itself, with sentinel pieces made USER_DEFINED if needed.

        A USER_DEFINED piece is always taken whole where its text appears; mT5's already are, this only guards
        against a model whose sentinels are ordinary, scored pieces.
        """
        if all(proto.pieces[i].type == _USER_DEFINED for i, _ in self._model_sentinels.values()):
            return self._sp
        for i, _ in self._model_sentinels.values():
            proto.pieces[i].type = _USER_DEFINED
        return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())

    def _build_added_tokens(self, s: _Settings) -> None:
        """Builds the added-token tables the way `T5Tokenizer.__init__` does, from the files' settings."""
        added = dict(s.added_tokens_decoder)
        has_added_sentinels = any(MARKER.fullmatch(t.content) for t in added.values())
        extra_ids = s.extra_ids if s.extra_ids is not None else (0 if self._model_sentinels else 100)
        additional = list(s.additional_special_tokens or [])
        listed = [t for t in additional if "<extra_id_" in t]
        if not listed:
            additional += [f"<extra_id_{i}>" for i in range(extra_ids)] if not self._model_sentinels else []
        elif extra_ids > 0 and extra_ids != len(listed):
            raise ValueError(f"Both extra_ids ({extra_ids}) and additional_special_tokens ({additional}) are provided "
                             "to T5Tokenizer. In this case the additional_special_tokens must include the extra_ids "
                             "tokens")
        if not has_added_sentinels and not self._model_sentinels:
            # Old T5-style repos list no ids: transformers puts <extra_id_i> at len(spiece) - 1 + extra_ids - i.
            # When the files do list them we trust the files (transformers would also invent ids here and can
            # end up decoding ordinary ids as sentinels).
            n = sum("<extra_id_" in t for t in additional)
            for i in range(n):
                added[self._sp_size - 1 + extra_ids - i] = AddedToken(
                    f"<extra_id_{i}>", lstrip=True, rstrip=True, special=True)
        self._added = added
        self._added_encoder = {t.content: i for i, t in added.items()}  # a later id wins, as in transformers
        for content in [self.eos_token, self.unk_token, self.pad_token, *additional]:
            marker = MARKER.fullmatch(content)
            if marker and int(marker.group(1)) in self._model_sentinels:
                continue  # mT5's own `▁<extra_id_N>` piece; transformers would invent an id past the model's
            if content not in self._added_encoder:
                self._add_token(AddedToken(content, special=True))
        self.additional_special_tokens = list(dict.fromkeys(additional))
        self._finish_tables()

    def _add_token(self, token: AddedToken) -> None:
        """Registers `token` at its SentencePiece id when it is a piece, else at the next free id."""
        piece_id = self._sp.piece_to_id(token.content)
        known = self._sp.id_to_piece(piece_id) == token.content
        token_id = piece_id if known else self._size_with(self._added)
        self._added[token_id] = token
        self._added_encoder[token.content] = token_id

    def _size_with(self, added: dict) -> int:
        """One past the largest id: SentencePiece's pieces and the added tokens."""
        return max([self._sp_size, *(i + 1 for i in added)])

    def _finish_tables(self) -> None:
        """Derived lookups: sentinels, special tokens/ids, the regex that finds added tokens in text."""
        self._sentinels = {n: i for n, (i, _) in self._model_sentinels.items()}
        for content, token_id in self._added_encoder.items():
            match = MARKER.fullmatch(content)
            if match:
                self._sentinels[int(match.group(1))] = token_id
        self.all_special_tokens = list(dict.fromkeys(
            [self.eos_token, self.unk_token, self.pad_token, *self.additional_special_tokens]))
        self._special_set = set(self.all_special_tokens)
        self.all_special_ids = [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]
        self._special_id_set = set(self.all_special_ids)
        # transformers decodes these apart from the SentencePiece text and joins the parts with spaces.
        self._decode_apart = (set(self._added_encoder) - self._special_set) | {
            t for t in self.additional_special_tokens if self.convert_tokens_to_ids(t) >= self._sp_size}
        contents = sorted(self._added_encoder, key=len, reverse=True)  # longest first, like transformers' trie
        self._added_re = re.compile("|".join(map(re.escape, contents))) if contents else None
        self._len = len(self.get_vocab())  # transformers' total_vocab_size: distinct tokens

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """The SentencePiece model's piece count, as `T5Tokenizer.vocab_size` (UMT5: 256000; `len(tok)` adds the
        added tokens: 256300)."""
        return self._sp_size

    def __len__(self) -> int:
        return self._len

    def get_vocab(self) -> dict:
        """token -> id: every piece, then the added tokens in id order (transformers' `get_vocab`)."""
        vocab = {self._id_to_token(i): i for i in range(self._sp_size)}
        vocab.update({self._added[i].content: i for i in sorted(self._added)})
        return vocab

    def convert_tokens_to_string(self, tokens: list) -> str:
        """Token strings -> text, as `T5Tokenizer.convert_tokens_to_string` (special tokens kept as written)."""
        return self._tokens_to_string(tokens)

    def _token_to_id(self, token: str) -> int:
        if token in self._added_encoder:
            return self._added_encoder[token]
        token_id = self._sp.piece_to_id(token)
        match = MARKER.fullmatch(token)
        if match and token_id == self._sp.unk_id() and int(match.group(1)) in self._sentinels:
            return self._sentinels[int(match.group(1))]
        return token_id

    def _id_to_token(self, token_id: int) -> str:
        if token_id in self._added:
            return self._added[token_id].content
        if not 0 <= token_id < self._sp_size:
            raise ValueError(f"id {token_id} is outside the vocabulary (size {len(self)})")
        return self._sp.id_to_piece(token_id)

    # ------------------------------------------------------------------ encoding one text

    def tokenize(self, text: str) -> list:
        """The token strings of `text` (no `</s>`), as `T5Tokenizer.tokenize`: text SentencePiece cannot encode
        (no byte fallback) shows as itself, not as `<unk>`; its id is unk's."""
        return [token for _, _, token in self._encode_tokens(text)]

    def _encode_text(self, text: str) -> list:
        """[(id, (start, end))] for one text, offsets in characters of `text`; no `</s>`."""
        return [(i, span) for i, span, _ in self._encode_tokens(text)]

    def _encode_tokens(self, text: str) -> list:
        """[(id, (start, end), token)] for one text: `T5Tokenizer.tokenize` with offsets.

        legacy=False (tokenizer_config.json or a keyword): `▁` in the text is a space, one `▁` starts the text
        (add_prefix_space), and a part that starts with a space is encoded after the unk token, which is then
        dropped, so SentencePiece (without its dummy prefix) gives no extra `▁` after a special token.
        """
        if not isinstance(text, str):
            raise TypeError(f"expected text as str, got {type(text).__name__}")
        new_rules = not self.legacy and bool(text)
        shift = 0
        if new_rules:
            text = text.replace(SPIECE_UNDERLINE, " ")
            if self.add_prefix_space:
                text, shift = SPIECE_UNDERLINE + text, 1
        out = []
        for start, end, added_id in self._split_on_added(text):
            if added_id is not None:
                out.append((added_id, (start, end), self._added[added_id].content))
            else:
                out += [(i, (s + start, e + start), piece)
                        for i, (s, e), piece in self._encode_segment(text[start:end], new_rules)]
        if new_rules and len(out) > 1 and out[0][2] == SPIECE_UNDERLINE and out[1][2] in self._special_set:
            out = out[1:]
        if shift:
            out = [(i, (max(s - shift, 0), max(e - shift, 0)), piece) for i, (s, e), piece in out]
        return out

    def _split_on_added(self, text: str) -> list:
        """Splits on added tokens: [(start, end, id or None)], empty text parts dropped.

        Mirrors `PreTrainedTokenizer.tokenize`: a token with `rstrip` swallows the whitespace after it,
        one with `lstrip` the whitespace before it.
        """
        parts, pos = [], 0
        for m in self._added_re.finditer(text) if self._added_re else ():
            parts += [[pos, m.start(), None], [m.start(), m.end(), self._added_encoder[m.group()]]]
            pos = m.end()
        parts.append([pos, len(text), None])
        for i, (start, end, added_id) in enumerate(parts):
            if added_id is None:
                continue
            token = self._added[added_id]
            if token.rstrip and i + 1 < len(parts) and parts[i + 1][2] is None:
                right = parts[i + 1]
                right[0] = right[1] - len(text[right[0]:right[1]].lstrip())
            if token.lstrip and i > 0 and parts[i - 1][2] is None:
                left = parts[i - 1]
                left[1] = left[0] + len(text[left[0]:left[1]].rstrip())
        return [tuple(p) for p in parts if p[1] > p[0]]

    def _encode_segment(self, text: str, new_rules: bool = False) -> list:
        """SentencePiece-encodes text holding no added token: [(id, (start, end), piece)], spans in characters
        of `text`. An unknown piece is its text (SentencePiece's piece string for it), with unk's id.

        `new_rules` (legacy=False): a text starting with a space is encoded after the unk token, whose pieces
        are then dropped (`T5Tokenizer._tokenize`).
        """
        prepared, source = self._space_glued_markers(text, new_rules)
        drop = 0
        if new_rules and text.startswith((SPIECE_UNDERLINE, " ")):
            prepared, source = self.unk_token + prepared, [0] * len(self.unk_token) + list(source)
            drop = self._unk_token_length
        serialized = self._sp_encode.encode(prepared, out_type="serialized_proto")
        pieces = list(sentencepiece_pb2.SentencePieceText.FromString(serialized).pieces)
        pieces = pieces[drop:] if len(pieces) >= drop else pieces
        char_at = _byte_to_char(prepared)
        out = []
        for p in pieces:
            # transformers maps the pieces' text to ids, added tokens first (unknown text stays unk).
            token_id = self._added_encoder.get(p.piece, p.id) if p.id != self._sp.unk_id() else p.id
            out.append((token_id, (source[char_at[p.begin]], source[char_at[p.end]]), p.piece))
        out = self._share_byte_spans(out)
        return [(i, _skip_leading_space(text, piece, span), piece) for i, span, piece in out]

    def _space_glued_markers(self, text: str, new_rules: bool = False) -> tuple:
        """Puts a space before each marker of an mT5 sentinel piece named `▁<extra_id_N>` that lacks one.

        Returns the text to encode and, for each of its characters (plus the end), the index in `text`.
        """
        inserts = []
        for m in MARKER.finditer(text):
            n, p = int(m.group(1)), m.start()
            if not self._model_sentinels.get(n, (0, ""))[1].startswith(SPIECE_UNDERLINE):
                continue
            before = text[p - 1] if p > 0 else ""
            spaced = (before.isspace() or before == SPIECE_UNDERLINE) if p > 0 else self._dummy_prefix
            if not spaced:
                inserts.append(p)
        if not inserts:
            return text, range(len(text) + 1)
        pieces, source, prev = [], [], 0
        for p in inserts:
            pieces += [text[prev:p], " "]
            source += [*range(prev, p), p]
            prev = p
        pieces.append(text[prev:])
        source += range(prev, len(text) + 1)
        return "".join(pieces), source

    def _share_byte_spans(self, encoded: list) -> list:
        """Byte-fallback pieces of one character all get that character's span.

        SentencePiece gives the character's span to the last byte piece and empty spans to the others.
        """
        out = list(encoded)
        for k in range(len(out) - 2, -1, -1):
            (i, (s, e), piece), (j, nxt, _) = out[k], out[k + 1]
            if s == e and self._is_byte(i) and self._is_byte(j) and nxt[0] == s:
                out[k] = (i, nxt, piece)
        return out

    def _is_byte(self, token_id: int) -> bool:
        return token_id < self._sp_size and self._sp.is_byte(token_id)

    # ------------------------------------------------------------------ decoding

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
               spaces_between_special_tokens: bool = True) -> str:
        """Ids (list, 1-D tensor or array) -> text, as `T5Tokenizer.decode`.

        Ids outside the vocabulary (such as -100 labels or the padding rows of mT5's 250112 embeddings) are
        dropped, where transformers would raise.
        """
        ids = [i for i in _as_id_list(ids) if i in self._added or 0 <= i < self._sp_size]
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        parts, pending = [], []
        for token in tokens:
            if skip_special_tokens and token in self._special_set:
                continue
            if token in self._decode_apart:
                text = self._tokens_to_string(pending) if pending else ""
                parts += [text] if text else []
                parts.append(token)
                pending = []
            else:
                pending.append(token)
        if pending:
            parts.append(self._tokens_to_string(pending))
        text = (" " if spaces_between_special_tokens else "").join(parts)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text

    def _tokens_to_string(self, tokens: list) -> str:
        """`T5Tokenizer.convert_tokens_to_string`: SentencePiece decodes the runs between special tokens."""
        tokens = list(tokens)
        if not tokens:
            return ""
        if tokens[0].startswith(SPIECE_UNDERLINE) and self.add_prefix_space:
            tokens[0] = tokens[0][1:]
        out, run, prev_special = "", [], False
        for token in tokens:
            if token in self._special_set:
                out += ("" if prev_special else " ") + self._sp.decode(run) + token
                run, prev_special = [], True
            else:
                run.append(token)
                prev_special = False
        return (out + self._sp.decode(run)).strip()

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, folder) -> list:
        """Writes spiece.model, tokenizer_config.json and special_tokens_map.json in the Hub's format.

        spiece.model is the model this tokenizer holds (the bytes it was built from), so the folder it came from
        may be gone. transformers' `T5Tokenizer.from_pretrained(folder)` loads the result. Returns the paths.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model_path = folder / "spiece.model"
        model_path.write_bytes(self._model_bytes)
        added_sentinels = [t for t in self._added.values() if MARKER.fullmatch(t.content)]
        specials = {"eos_token": self.eos_token, "unk_token": self.unk_token, "pad_token": self.pad_token}
        if self.additional_special_tokens:
            specials["additional_special_tokens"] = self.additional_special_tokens
        config = {
            **specials,
            # transformers re-creates `extra_ids` sentinels at len(spiece) - 1 + extra_ids - i; that matches
            # added sentinels only when this count is right, and must be 0 for mT5's in-model ones.
            "extra_ids": len(added_sentinels),
            "added_tokens_decoder": {str(i): asdict(t) for i, t in sorted(self._added.items())},
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "legacy": self.legacy,
            "add_prefix_space": self.add_prefix_space,
            "padding_side": self.padding_side,
            **({"truncation_side": "left"} if self.truncation_side == "left" else {}),
            "sp_model_kwargs": {},
            "tokenizer_class": "T5Tokenizer",
        }
        paths = [model_path, folder / "tokenizer_config.json", folder / "special_tokens_map.json"]
        paths[1].write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
        paths[2].write_text(json.dumps(specials, ensure_ascii=False, indent=2), encoding="utf-8")
        return paths

    def __repr__(self) -> str:
        return (f"MT5Tokenizer(vocab_size={self.vocab_size}, sentinels={len(self._sentinels)}, "
                f"model_max_length={self.model_max_length})")


class MT5TokenizerFast(TokenizerBase):
    """mT5 / UMT5 tokenizer read from `tokenizer.json` with the `tokenizers` library, equal to transformers
    4.57's `T5TokenizerFast`.

    For checkpoints that ship only tokenizer.json: the file is used as it is, because the checkpoint's authors
    tokenized with exactly it. Ids, tokens, offsets (the library's character spans), sentinels and decodes
    (`tokenizers`' decode, then transformers' clean-up when `clean_up_tokenization_spaces` is set) are
    transformers' fast tokenizer's, and so are its `</s>` (always appended, also to a text that already ends
    with `</s>`) and its truncation rules (`tokenizers`' `truncate_encodings`; an `only_first`/`only_second`
    cut that the text is too short for raises ValueError).

    A glued mT5 marker (`foo<extra_id_0>bar`) is encoded as tokenizer.json does it, like transformers' fast
    tokenizer: spelled out (`<`, `extra`, ...), since mT5's sentinels are pieces named `▁<extra_id_N>`. Our
    SentencePiece `MT5Tokenizer` maps it to the sentinel instead; put a space before mT5 markers to get the
    sentinel from both. UMT5's sentinels are added tokens, found anywhere by both.

    Deliberate differences from transformers: `convert_tokens_to_ids("<extra_id_N>")` also finds mT5's
    `▁<extra_id_N>` piece; `decode` drops ids outside the vocabulary (-100 labels, padding rows) where
    transformers raises; tokenizer_config.json's `extra_ids`
    never invents sentinel tokens missing from tokenizer.json (transformers 4.57 would add them past the
    vocabulary). Against our `MT5Tokenizer` on a repo with both files, ids are equal except: glued mT5 markers,
    characters outside the vocabulary (transformers' converter drops SentencePiece's byte fallback, so each is
    `<unk>` here and its UTF-8 bytes there), a text ending in `</s>`, and pair truncation as above.

    `MT5TokenizerFast.from_pretrained` on a repo with spiece.model but no tokenizer.json refuses (we do not
    convert): use `MT5Tokenizer.from_pretrained`, which reads spiece.model.
    """

    def __init__(self, tokenizer_file, **kwargs):
        """`tokenizer_file`: a tokenizer.json. Keyword arguments as `T5TokenizerFast`'s: `eos_token`,
        `unk_token`, `pad_token` (names of tokens in the file), `additional_special_tokens` (a name missing from
        the file is added as a special token at the next id), `model_max_length`,
        `clean_up_tokenization_spaces`, `padding_side`; others are ignored."""
        self.tokenizer_file = Path(tokenizer_file)
        try:
            self._tk = Tokenizer.from_file(str(self.tokenizer_file))
        except Exception as err:  # tokenizers raises a plain Exception for a file it cannot read
            raise ValueError(f"{self.tokenizer_file} is not a `tokenizers` tokenizer.json ({err}); expected the "
                             "tokenizer.json of an mT5/UMT5 repo") from err
        self._tk.no_truncation()  # truncation and padding are set per call, as transformers does
        self._tk.no_padding()
        settings = _Settings.merged(kwargs.pop("_settings", None), kwargs)
        self.model_max_length = settings.model_max_length
        self.clean_up_tokenization_spaces = settings.clean_up_tokenization_spaces
        self.padding_side = settings.padding_side
        self.truncation_side = settings.truncation_side
        self.eos_token, self.unk_token, self.pad_token = settings.eos_token, settings.unk_token, settings.pad_token
        self.additional_special_tokens = list(dict.fromkeys(settings.additional_special_tokens or []))
        missing = [t for t in self.additional_special_tokens if self._tk.token_to_id(t) is None]
        if missing:
            self._tk.add_special_tokens([AddedTokenJson(t, special=True) for t in missing])
        self._sentinels = self._find_sentinels()
        self.all_special_tokens = list(dict.fromkeys(
            [self.eos_token, self.unk_token, self.pad_token, *self.additional_special_tokens]))
        self.all_special_ids = [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]
        self._special_id_set = set(self.all_special_ids)

    @classmethod
    def from_pretrained(cls, repo_id_or_dir, revision=None, token=None, cache_dir=None,
                        local_files_only: bool = False, **kwargs) -> "MT5TokenizerFast":
        """Loads tokenizer.json (+ tokenizer_config.json, special_tokens_map.json) from a folder or a Hub repo.

        Keyword arguments (those of `__init__`) override the files. A checkpoint with no tokenizer files falls
        back as `MT5Tokenizer.from_pretrained` does.
        """
        files = _resolve_files(str(repo_id_or_dir), revision, token, cache_dir, local_files_only)
        if files["tokenizer.json"] is None:
            raise CheckpointNotFoundError(
                f"no tokenizer.json in {repo_id_or_dir}, only spiece.model: MT5TokenizerFast does not convert "
                f"SentencePiece models; load it with MT5Tokenizer.from_pretrained({str(repo_id_or_dir)!r})")
        return cls.from_files(files, **kwargs)

    @classmethod
    def from_files(cls, files: dict, **kwargs) -> "MT5TokenizerFast":
        """Builds from resolved files: {"tokenizer.json": path, "tokenizer_config.json": path or None, ...}."""
        settings = _read_settings({**files, "tokenizer.json": None})
        return cls(files["tokenizer.json"], _settings=settings, **kwargs)

    def _find_sentinels(self) -> dict:
        """n -> id of `<extra_id_n>`: UMT5's added tokens, or mT5's `▁<extra_id_n>` pieces."""
        found = {}
        for token, token_id in self._tk.get_vocab(with_added_tokens=True).items():
            match = MARKER.fullmatch(token.removeprefix(SPIECE_UNDERLINE)) if "<extra_id_" in token else None
            if match and (int(match.group(1)) not in found or not token.startswith(SPIECE_UNDERLINE)):
                found[int(match.group(1))] = token_id
        return found

    @property
    def vocab_size(self) -> int:
        """Size of tokenizer.json's model vocabulary without the added tokens, as `T5TokenizerFast.vocab_size`
        (`len(tok)` counts them too)."""
        return self._tk.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict:
        """token -> id, added tokens included (`T5TokenizerFast.get_vocab`)."""
        return self._tk.get_vocab(with_added_tokens=True)

    def convert_tokens_to_string(self, tokens: list) -> str:
        """Token strings -> text with tokenizer.json's decoder (`T5TokenizerFast.convert_tokens_to_string`)."""
        decoder = self._tk.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    def _token_to_id(self, token: str) -> int:
        token_id = self._tk.token_to_id(token)
        if token_id is not None:
            return token_id
        match = MARKER.fullmatch(token)
        if match and int(match.group(1)) in self._sentinels:
            return self._sentinels[int(match.group(1))]
        return self._tk.token_to_id(self.unk_token)

    def _id_to_token(self, token_id: int) -> str:
        token = self._tk.id_to_token(token_id) if token_id >= 0 else None
        if token is None:
            raise ValueError(f"id {token_id} is outside the vocabulary (size {len(self)})")
        return token

    def _encode_text(self, text: str) -> list:
        """[(id, (start, end))] for one text, offsets in characters of `text`; no `</s>`."""
        if not isinstance(text, str):
            raise TypeError(f"expected text as str, got {type(text).__name__}")
        encoding = self._tk.encode(text, add_special_tokens=False)
        return list(zip(encoding.ids, encoding.offsets))

    def tokenize(self, text: str) -> list:
        """The token strings of `text` (no `</s>`), as `tokenizers` gives them: an `<unk>` shows its text."""
        return self._tk.encode(text, add_special_tokens=False).tokens

    def _add_eos(self, encoded: list) -> list:
        """tokenizer.json's post-processor (`$A </s>`) appends `</s>` even after a text's own `</s>`."""
        return encoded + [(self.eos_token_id, (0, 0))]

    def _truncate_pair(self, first: list, second, n: int, strategy: str) -> tuple:
        """Removes n tokens by `tokenizers`' `truncate_encodings`, as transformers' fast tokenizer does.

        `longest_first` on a pair keeps the shorter text whole if the longer one can take the cut, else
        budget // 2 tokens of the shorter and the rest of the budget for the longer (the second text on a
        tie), where the slow tokenizer removes tokens one at a time from the longer.
        """
        budget = len(first) + len(second or []) - n
        if budget <= 0:
            return first[:0], None if second is None else second[:0]
        if strategy == "longest_first":
            if second is None:
                return first[:budget], None
            short = min(len(first), len(second))
            long = short if short > budget else max(short, budget - short)
            if short + long > budget:
                short, long = budget // 2, budget // 2 + budget % 2
            keep_first, keep_second = (long, short) if len(first) > len(second) else (short, long)
            return first[:keep_first], second[:keep_second]
        target = first if strategy == "only_first" else second
        if target is None:
            raise ValueError("truncation='only_second' needs a second text (text_pair)")
        if len(target) <= n:
            raise ValueError(f"cannot remove {n} tokens from a text of {len(target)} with truncation={strategy!r}: "
                             "raise max_length or use truncation='longest_first'")
        cut = target[:len(target) - n]
        return (cut, second) if strategy == "only_first" else (first, cut)

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
               spaces_between_special_tokens: bool = True) -> str:
        """Ids (list, 1-D tensor or array) -> text, as `T5TokenizerFast.decode`.

        Ids outside the vocabulary are dropped. `spaces_between_special_tokens` is accepted and ignored, as
        by transformers' fast tokenizer.
        """
        size = len(self)
        ids = [i for i in _as_id_list(ids) if 0 <= i < size]
        text = self._tk.decode(ids, skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text

    def save_pretrained(self, folder) -> list:
        """Writes tokenizer.json (the file as read), tokenizer_config.json and special_tokens_map.json.

        transformers' `T5TokenizerFast.from_pretrained(folder)` loads the result. Returns the paths written.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "tokenizer.json", folder / "tokenizer_config.json", folder / "special_tokens_map.json"]
        self._tk.save(str(paths[0]))  # the tokenizer held (with any tokens added), not a copy of the source file
        specials = {"eos_token": self.eos_token, "unk_token": self.unk_token, "pad_token": self.pad_token}
        if self.additional_special_tokens:
            specials["additional_special_tokens"] = self.additional_special_tokens
        config = {
            **specials,
            # T5TokenizerFast invents `extra_ids` sentinels when additional_special_tokens lists none: say how
            # many are listed (0 for mT5, whose sentinels are pieces).
            "extra_ids": sum(bool(MARKER.fullmatch(t)) for t in self.additional_special_tokens),
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "padding_side": self.padding_side,
            **({"truncation_side": "left"} if self.truncation_side == "left" else {}),
            "tokenizer_class": "T5Tokenizer",
        }
        paths[1].write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
        paths[2].write_text(json.dumps(specials, ensure_ascii=False, indent=2), encoding="utf-8")
        return paths

    def __repr__(self) -> str:
        return (f"MT5TokenizerFast(vocab_size={self.vocab_size}, sentinels={len(self._sentinels)}, "
                f"model_max_length={self.model_max_length})")


# ---------------------------------------------------------------------- helpers


def clean_up_tokenization(text: str) -> str:
    """transformers' clean-up of English tokenization spaces (" ." -> ".", " n't" -> "n't", ...)."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(old, new)
    return text


def _mode(value, modes: dict, name: str):
    """Looks up a padding/truncation argument; `True` and `1` are told apart."""
    for key, mode in modes.items():
        if value is key or (isinstance(key, str) and value == key):
            return mode
    raise ValueError(f"unknown {name}={value!r}: expected one of {[k for k in modes if k is not None]}")


def _truncate(first: list, second, n: int, strategy: str) -> tuple:
    """Removes n tokens from the right, by `PreTrainedTokenizerBase.truncate_sequences`'s rules."""
    if strategy == "only_first" or (strategy == "longest_first" and second is None):
        if len(first) > n:
            return first[:-n], second
        warnings.warn(f"cannot remove {n} tokens from a text of {len(first)}: not truncated", stacklevel=5)
    elif strategy == "longest_first":
        first_remove = min(abs(len(second) - len(first)), n)
        rest = n - first_remove
        if len(first) > len(second):
            cut1, cut2 = first_remove + rest // 2, rest - rest // 2
        else:
            cut1, cut2 = rest // 2, first_remove + rest - rest // 2
        return (first[:-cut1] if cut1 > 0 else first), (second[:-cut2] if cut2 > 0 else second)
    elif strategy == "only_second" and second is not None:
        if len(second) > n:
            return first, second[:-n]
        warnings.warn(f"cannot remove {n} tokens from a second text of {len(second)}: not truncated", stacklevel=5)
    return first, second


def _byte_to_char(text: str) -> list:
    """For each UTF-8 byte offset of `text` (and its end), the index of the character holding it."""
    table = []
    for index, char in enumerate(text):
        table += [index] * len(char.encode("utf-8"))
    table.append(len(text))
    return table


def _skip_leading_space(text: str, piece: str, span: tuple) -> tuple:
    """A `▁`-piece's span starts at its first visible character, not at the whitespace the `▁` stands for."""
    start, end = span
    if piece.startswith(SPIECE_UNDERLINE) and text[start:end].strip():
        while text[start].isspace():
            start += 1
    return start, end


def _as_id_list(ids) -> list:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


def _as_rows(sequences) -> list:
    if hasattr(sequences, "tolist"):
        sequences = sequences.tolist()
    return list(sequences)


def _check_tensor_kind(return_tensors) -> None:
    if return_tensors not in RETURN_TENSORS:
        raise ValueError(f"return_tensors must be None, 'pt' or 'np', not {return_tensors!r}")


def _round_up(length, multiple):
    """`length` rounded up to a multiple of `multiple` (None: unchanged)."""
    if length is None or not multiple or length % multiple == 0:
        return length
    return (length // multiple + 1) * multiple


def _to_tensors(encoding: BatchEncoding, kind, batch: bool = True) -> BatchEncoding:
    """Lists of equal-length rows -> torch.long ("pt") or int64 ("np") tensors. Ragged rows: ValueError for "pt";
    for "np" an object array of int64 rows, as transformers gives.

    `batch=False` (one example, from `pad`) gives 1-D tensors, as transformers does.
    """
    if kind is None:
        return encoding
    out = BatchEncoding()
    for key, value in encoding.items():
        ragged = batch and len({len(row) for row in value}) > 1
        if ragged and kind == "pt":
            raise ValueError(f"rows of {key!r} have different lengths: pass padding=True to return tensors")
        if ragged:  # transformers' numpy conversion: an object array of int64 rows
            out[key] = np.empty(len(value), dtype=object)
            out[key][:] = [np.asarray(row, dtype=np.int64) for row in value]
        else:
            out[key] = np.asarray(value, dtype=np.int64) if kind == "np" else torch.tensor(value, dtype=torch.long)
    return out


def _as_python_lists(encoded: dict) -> tuple:
    """(a dict of plain lists, the tensor kind found or None), as `pad` reads its input."""
    ids = encoded["input_ids"]
    first = ids[0]
    if isinstance(first, (list, tuple)):
        first = next((row[0] for row in ids if len(row)), first)
    if isinstance(first, (int, list, tuple)):
        return dict(encoded), None
    if isinstance(first, torch.Tensor):
        kind = "pt"
    elif isinstance(first, (np.ndarray, np.generic)):
        kind = "np"
    else:
        raise ValueError(f"type of {first} unknown: {type(first)}. Should be one of a python, numpy, pytorch or "
                         "tensorflow object.")
    return {k: v.tolist() if hasattr(v, "tolist") else [x.tolist() if hasattr(x, "tolist") else x for x in v]
            for k, v in encoded.items()}, kind


# ---------------------------------------------------------------------- files


def _resolve_files(name: str, revision, token, cache_dir, local_files_only: bool = False) -> dict:
    """Local paths of spiece.model and the optional json files (None where absent), from a folder or a Hub repo
    (through model.hub: the cache, HF_HUB_OFFLINE, one CheckpointNotFoundError with a clear message)."""
    hub = dict(revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only)
    files = {f: resolve_file(name, f, optional=True, **hub) for f in ("spiece.model", *OPTIONAL_FILES)}
    if files["spiece.model"] or files["tokenizer.json"]:
        return files
    return _base_model_files(name, hub)


def _base_model_files(name: str, hub: dict) -> dict:
    """For a checkpoint saved without tokenizer files: those of the base model its config.json names.

    transformers writes the name a model was loaded from into config.json as `_name_or_path`; for a
    fine-tune that is usually its base (google/mt5-base, ...), sometimes a training folder that does not exist
    here. Without a usable base, a CheckpointNotFoundError says which tokenizer to pass.
    """
    config_path = resolve_file(name, "config.json", optional=True, **hub)
    if config_path is None and not Path(name).is_dir():
        resolve_file(name, "spiece.model", **hub)  # raises why the repo cannot be read (offline, missing, ...)
    config = _read_json(config_path)
    base = config.get("_name_or_path")
    tried = ""
    if isinstance(base, str) and base.strip() and base != name:
        base_hub = {**hub, "revision": None}  # the revision named the fine-tune, not its base
        try:
            files = {f: resolve_file(base, f, optional=True, **base_hub) for f in ("spiece.model", *OPTIONAL_FILES)}
        except CheckpointNotFoundError:
            files = {}
        if files.get("spiece.model") or files.get("tokenizer.json"):
            warnings.warn(f"{name} has no tokenizer files: using those of its base model {base} "
                          "(config.json's _name_or_path)", stacklevel=4)
            return files
        tried = f"; its config.json names the base model {base!r}, whose tokenizer is not available here either"
    family = json.dumps([config.get("model_type"), config.get("architectures")]).lower()
    example = "google/umt5-small" if "umt5" in family else "google/mt5-small"
    raise CheckpointNotFoundError(
        f"no spiece.model in {name}: this checkpoint has no tokenizer files (spiece.model or tokenizer.json)"
        f"{tried}: pass the tokenizer of its base model, e.g. MT5Tokenizer.from_pretrained({example!r})")


def _read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8")) if path else {}


def _token_text(value, default):
    """A special-token setting: a string, a serialized AddedToken dict, or absent."""
    if value is None:
        return default
    return value["content"] if isinstance(value, dict) else str(value)


def _read_settings(files: dict) -> _Settings:
    """Merges the tokenizer files by transformers' `from_pretrained` rules.

    tokenizer_config.json's `added_tokens_decoder`, when present, is the whole list of added tokens; otherwise
    special_tokens_map.json adds to the config and added_tokens.json and tokenizer.json's "added_tokens" list
    the added tokens.
    """
    config = _read_json(files.get("tokenizer_config.json"))
    added = {}
    extra = [_token_text(t, None) for t in config.get("additional_special_tokens") or []]
    if "added_tokens_decoder" in config:
        added = {int(i): AddedToken.from_json(t) for i, t in config["added_tokens_decoder"].items()}
    else:
        special_map = _read_json(files.get("special_tokens_map.json"))
        for key, value in special_map.items():
            if key == "additional_special_tokens":
                extra += [t for t in map(lambda v: _token_text(v, None), value or []) if t not in extra]
            else:
                config[key] = value
        specials = {_token_text(config.get(k), None) for k in ("eos_token", "unk_token", "pad_token")} | set(extra)
        for content, i in _read_json(files.get("added_tokens.json")).items():
            added[int(i)] = AddedToken(content, special=content in specials)
        for entry in _read_json(files.get("tokenizer.json")).get("added_tokens", []):
            added[int(entry["id"])] = AddedToken.from_json(entry)
    return _Settings(
        added_tokens_decoder=added, additional_special_tokens=extra,
        eos_token=_token_text(config.get("eos_token"), "</s>"), unk_token=_token_text(config.get("unk_token"), "<unk>"),
        pad_token=_token_text(config.get("pad_token"), "<pad>"), extra_ids=config.get("extra_ids"),
        model_max_length=int(config.get("model_max_length") or VERY_LARGE_INTEGER),
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        add_prefix_space=bool(config.get("add_prefix_space", True)),
        legacy=config.get("legacy"), padding_side=config.get("padding_side") or "right",
        truncation_side=config.get("truncation_side") or "right",
    )
