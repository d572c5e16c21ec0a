"""mT5 / UMT5 tokenizer on the `sentencepiece` library, equal to transformers 4.57's slow `T5Tokenizer`.

Encoding follows `T5Tokenizer` with its default `legacy=True` (what a plain `from_pretrained` gives for the Hub's
mT5 and UMT5 repos, whose configs carry no `legacy` key): the text is split on the *added* tokens (`<pad>`,
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
"""
import json
import re
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2, sentencepiece_pb2

SPIECE_UNDERLINE = "▁"
MARKER = re.compile(r"<extra_id_(\d+)>")
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
    """What the tokenizer files say, after transformers' rules for merging them."""
    added: dict          # id -> AddedToken, in the order transformers builds them
    additional_special_tokens: list
    eos_token: str = "</s>"
    unk_token: str = "<unk>"
    pad_token: str = "<pad>"
    extra_ids: int | None = None
    model_max_length: int = VERY_LARGE_INTEGER
    clean_up_tokenization_spaces: bool = False
    add_prefix_space: bool = True


class MT5Tokenizer:
    """SentencePiece tokenizer for mT5 and UMT5 checkpoints with a transformers-like API.

    Build it with `MT5Tokenizer.from_pretrained(repo_id_or_dir)`. Ids: pad 0, eos 1, unk 2 (read from the files).
    """

    def __init__(self, vocab_file, settings: _Settings | None = None):
        self.vocab_file = Path(vocab_file)
        self._model_bytes = self.vocab_file.read_bytes()
        try:
            proto = sentencepiece_model_pb2.ModelProto.FromString(self._model_bytes)
            self._sp = spm.SentencePieceProcessor(model_proto=self._model_bytes)
        except Exception as err:  # protobuf DecodeError, RuntimeError from sentencepiece
            raise ValueError(f"{self.vocab_file} is not a SentencePiece model ({err}); "
                             "expected the `spiece.model` file of an mT5/UMT5 repo") from err
        settings = settings or _Settings(added={}, additional_special_tokens=[])
        self._sp_size = self._sp.get_piece_size()
        self._dummy_prefix = proto.normalizer_spec.add_dummy_prefix
        self._model_sentinels = self._find_model_sentinels(proto)
        self._sp_encode = self._encoding_processor(proto)
        self.model_max_length = settings.model_max_length
        self.clean_up_tokenization_spaces = settings.clean_up_tokenization_spaces
        self.add_prefix_space = settings.add_prefix_space
        self.eos_token, self.unk_token, self.pad_token = settings.eos_token, settings.unk_token, settings.pad_token
        self._build_added_tokens(settings)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, repo_id_or_dir, revision=None, token=None, cache_dir=None) -> "MT5Tokenizer":
        """Loads from a local folder or a Hub repo (through the huggingface_hub cache; honours HF_HUB_OFFLINE).

        Reads `spiece.model` and, when present, tokenizer_config.json, special_tokens_map.json,
        added_tokens.json and tokenizer.json (only its "added_tokens").
        """
        files = _resolve_files(str(repo_id_or_dir), revision, token, cache_dir)
        return cls(files["spiece.model"], _read_settings(files))

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
        added = dict(s.added)
        has_added_sentinels = any(MARKER.fullmatch(t.content) for t in added.values())
        extra_ids = s.extra_ids if s.extra_ids is not None else (0 if self._model_sentinels else 100)
        additional = list(s.additional_special_tokens)
        if not any("<extra_id_" in t for t in additional):
            additional += [f"<extra_id_{i}>" for i in range(extra_ids)] if not self._model_sentinels else []
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
            if content not in self._added_encoder:
                self._add_token(AddedToken(content, special=True))
        self.additional_special_tokens = list(dict.fromkeys(additional))
        self._finish_tables()

    def _add_token(self, token: AddedToken) -> None:
        """Registers `token` at its SentencePiece id when it is a piece, else at the next free id."""
        piece_id = self._sp.piece_to_id(token.content)
        known = self._sp.id_to_piece(piece_id) == token.content
        token_id = piece_id if known else self.vocab_size_from(self._added)
        self._added[token_id] = token
        self._added_encoder[token.content] = token_id

    def vocab_size_from(self, added: dict) -> int:
        return max([self._sp_size, *(i + 1 for i in added)])

    def _finish_tables(self) -> None:
        """Derived lookups: special tokens/ids, sentinels, the regex that finds added tokens in text."""
        self.all_special_tokens = list(dict.fromkeys(
            [self.eos_token, self.unk_token, self.pad_token, *self.additional_special_tokens]))
        self._special_set = set(self.all_special_tokens)
        self.all_special_ids = [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]
        self._special_id_set = set(self.all_special_ids)
        # transformers decodes these apart from the SentencePiece text and joins the parts with spaces.
        self._decode_apart = (set(self._added_encoder) - self._special_set) | {
            t for t in self.additional_special_tokens if self.convert_tokens_to_ids(t) >= self._sp_size}
        self._sentinels = {n: i for n, (i, _) in self._model_sentinels.items()}
        for content, token_id in self._added_encoder.items():
            match = MARKER.fullmatch(content)
            if match:
                self._sentinels[int(match.group(1))] = token_id
        contents = sorted(self._added_encoder, key=len, reverse=True)  # longest first, like transformers' trie
        self._added_re = re.compile("|".join(map(re.escape, contents))) if contents else None

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """SentencePiece pieces plus the added tokens beyond them (UMT5: 256000 + 300)."""
        return self.vocab_size_from(self._added)

    def __len__(self) -> int:
        return self.vocab_size

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

    def convert_tokens_to_ids(self, tokens):
        """Token string(s) -> id(s): added tokens, then SentencePiece pieces.

        Unlike transformers, the name `<extra_id_N>` also finds mT5's sentinel piece `▁<extra_id_N>`.
        """
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int:
        if token in self._added_encoder:
            return self._added_encoder[token]
        token_id = self._sp.piece_to_id(token)
        match = MARKER.fullmatch(token)
        if match and token_id == self._sp.unk_id() and int(match.group(1)) in getattr(self, "_sentinels", {}):
            return self._sentinels[int(match.group(1))]
        return token_id

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """Id(s) -> token string(s) (added tokens' text or SentencePiece pieces)."""
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            return self._id_to_token(int(ids))
        ids = _as_id_list(ids)
        return [self._id_to_token(i) for i in ids if not (skip_special_tokens and i in self._special_id_set)]

    def _id_to_token(self, token_id: int) -> str:
        if token_id in self._added:
            return self._added[token_id].content
        if not 0 <= token_id < self._sp_size:
            raise ValueError(f"id {token_id} is outside the vocabulary (size {self.vocab_size})")
        return self._sp.id_to_piece(token_id)

    # ------------------------------------------------------------------ encoding one text

    def tokenize(self, text: str) -> list:
        """The token strings of `text` (no `</s>`)."""
        return self.convert_ids_to_tokens([i for i, _ in self._encode_text(text)])

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True) -> list:
        """Ids of one text (or pair), `</s>` included: `self(text)["input_ids"]`."""
        return self(text, text_pair, add_special_tokens=add_special_tokens)["input_ids"]

    def _encode_text(self, text: str) -> list:
        """[(id, (start, end))] for one text, offsets in characters of `text`; no `</s>`."""
        if not isinstance(text, str):
            raise TypeError(f"expected text as str, got {type(text).__name__}")
        out = []
        for start, end, added_id in self._split_on_added(text):
            if added_id is not None:
                out.append((added_id, (start, end)))
            else:
                out += [(i, (s + start, e + start)) for i, (s, e) in self._encode_segment(text[start:end])]
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

    def _encode_segment(self, text: str) -> list:
        """SentencePiece-encodes text holding no added token: [(id, (start, end))] in characters of `text`."""
        prepared, source = self._space_glued_markers(text)
        serialized = self._sp_encode.encode(prepared, out_type="serialized_proto")
        pieces = sentencepiece_pb2.SentencePieceText.FromString(serialized).pieces
        char_at = _byte_to_char(prepared)
        out = []
        for p in pieces:
            token_id = self._added_encoder.get(p.piece, p.id) if p.id != self._sp.unk_id() else p.id
            out.append((token_id, (source[char_at[p.begin]], source[char_at[p.end]])))
        out = self._share_byte_spans(out)
        return [(i, _skip_leading_space(text, self._sp.id_to_piece(i) if i < self._sp_size else "", span))
                for i, span in out]

    def _space_glued_markers(self, text: str) -> tuple:
        """Puts a space before each marker of an mT5 sentinel piece named `▁<extra_id_N>` that lacks one.

        Returns the text to encode and, for each of its characters (plus the end), the index in `text`.
        """
        inserts = []
        for m in MARKER.finditer(text):
            n, p = int(m.group(1)), m.start()
            if not self._model_sentinels.get(n, (0, ""))[1].startswith(SPIECE_UNDERLINE):
                continue
            spaced = text[p - 1].isspace() if p > 0 else self._dummy_prefix
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
            (i, (s, e)), (j, nxt) = out[k], out[k + 1]
            if s == e and self._is_byte(i) and self._is_byte(j) and nxt[0] == s:
                out[k] = (i, nxt)
        return out

    def _is_byte(self, token_id: int) -> bool:
        return token_id < self._sp_size and self._sp.is_byte(token_id)
