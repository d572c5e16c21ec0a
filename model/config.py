"""Typed configs for mT5, UMT5 and T5 (aya-101, MADLAD-400, Flan-T5, t5-*), field for field the Hub's `config.json`.

Unknown keys are kept (in `extra`) and written back on save; nothing is guessed from file or repo names.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .hub import resolve_file

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
MAX_NEW_TOKENS_LIMIT = 2048  # a documented clamp: larger requests are cut here, with a warning
DEFAULT_MAX_LENGTH = 20  # transformers' GenerationConfig().max_length: 20 new tokens after the decoder prompt
CACHE_IMPLEMENTATIONS = (None, "dynamic")  # our cache grows as it fills: transformers' "dynamic" cache

# Keys whose values transformers writes but which we derive or do not need to keep separately.
_DERIVED_KEYS = {"dense_act_fn", "is_gated_act", "transformers_version", "_name_or_path"}

# transformers' T5 attribute_map (the same for mT5 and UMT5), plus `dtype`, 4.57's name for torch_dtype.
ATTRIBUTE_MAP = {"hidden_size": "d_model", "num_attention_heads": "num_heads", "num_hidden_layers": "num_layers",
                 "head_dim": "d_kv", "dtype": "torch_dtype"}
# PretrainedConfig's common attributes with its defaults (4.57): kept in `extra` when set, else read from here.
COMMON_DEFAULTS: dict[str, Any] = {
    "return_dict": True, "output_hidden_states": False, "output_attentions": False, "torchscript": False,
    "pruned_heads": {}, "chunk_size_feed_forward": 0, "is_decoder": False, "cross_attention_hidden_size": None,
    "add_cross_attention": False, "tie_encoder_decoder": False, "finetuning_task": None,
    "task_specific_params": None, "prefix": None, "bos_token_id": None, "sep_token_id": None,
    "tf_legacy_loss": False, "use_bfloat16": False, "max_length": 20, "min_length": 0, "do_sample": False,
    "early_stopping": False, "num_beams": 1, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0,
    "repetition_penalty": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "num_return_sequences": 1, "output_scores": False,
    "return_dict_in_generate": False, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "remove_invalid_values": False, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "num_beam_groups": 1, "diversity_penalty": 0.0,
}
# The decoding keys of that list: transformers moves non-default ones from config.json to generation_config.json.
GENERATION_KEYS = tuple(list(COMMON_DEFAULTS)[list(COMMON_DEFAULTS).index("max_length"):])


def accepts_pretrained_kwargs(cls):
    """Lets the dataclass __init__ take what PretrainedConfig's takes: aliases (hidden_size, dtype, ...) set
    their fields after __init__ as transformers does (so num_hidden_layers=3 leaves num_decoder_layers at the
    default num_layers' value, as there), any other keyword (bos_token_id, return_dict, ...) goes into `extra`."""
    init = cls.__init__
    names = set(cls.__dataclass_fields__)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        extra = dict(kwargs.pop("extra", None) or {})
        known, aliased = {}, {}
        for key, value in kwargs.items():
            if key in names:
                known[key] = value
            elif key in ATTRIBUTE_MAP:
                aliased[ATTRIBUTE_MAP[key]] = value
            elif key not in _DERIVED_KEYS:
                extra[key] = value
        if "torch_dtype" in aliased:  # `dtype` is only a newer name: it goes through __post_init__
            known.setdefault("torch_dtype", aliased.pop("torch_dtype"))
        init(self, *args, **known, extra=extra)
        for key, value in aliased.items():
            setattr(self, key, value)

    cls.__init__ = __init__
    return cls


@accepts_pretrained_kwargs
@dataclass
class MT5Config:
    """Configuration of an mT5 model. Defaults are google/mt5-small's shape."""

    model_type: ClassVar[str] = "mt5"

    vocab_size: int = 250112
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_layers: int = 8
    num_decoder_layers: int | None = None
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "gated-gelu"
    is_encoder_decoder: bool = True
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    classifier_dropout: float = 0.0
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    architectures: list[str] | None = None
    tokenizer_class: str | None = "T5Tokenizer"
    torch_dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.torch_dtype is not None and not isinstance(self.torch_dtype, str):  # a torch.dtype
            self.torch_dtype = str(self.torch_dtype).removeprefix("torch.")
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r} is not valid: use 'gated-ACT' or 'ACT', e.g. "
                "'gated-gelu' or 'relu'"
            )
        self._normalize_labels()
        if self.problem_type not in (None, "regression", "single_label_classification",
                                     "multi_label_classification"):
            raise ValueError(f"problem_type={self.problem_type!r} is not one of regression, "
                             "single_label_classification, multi_label_classification")

    def _normalize_labels(self) -> None:
        # JSON turns id2label's int keys into strings; transformers turns them back.
        if self.id2label is not None:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
        if self.num_labels is None:
            self.num_labels = len(self.id2label) if self.id2label else 2
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        elif len(self.id2label) != self.num_labels:
            self.num_labels = len(self.id2label)
        if self.label2id is None or len(self.label2id) != self.num_labels:
            self.label2id = {v: k for k, v in self.id2label.items()}

    # Derived values -----------------------------------------------------------------------------------
    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        # mT5's "gated-gelu" means the tanh approximation ("gelu_new").
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @property
    def per_layer_bias(self) -> bool:
        """UMT5 has a relative-bias table in every self-attention layer; mT5 only in block 0."""
        return self.model_type == "umt5"

    def num_parameters(self) -> int:
        """Parameters of the whole encoder-decoder with its lm_head, from the shape alone (no model built):
        an upper bound for any head, used to refuse a config too large to serve before anything is built."""
        d, inner, ffn = self.d_model, self.inner_dim, (3 if self.is_gated_act else 2) * self.d_model * self.d_ff
        bias = self.relative_attention_num_buckets * self.num_heads
        enc_bias = bias * (self.num_layers if self.per_layer_bias else 1)
        dec_bias = bias * (self.num_decoder_layers if self.per_layer_bias else 1)
        encoder = self.num_layers * (4 * d * inner + ffn + 2 * d) + enc_bias + d
        decoder = self.num_decoder_layers * (8 * d * inner + ffn + 3 * d) + dec_bias + d
        return (1 if self.tie_word_embeddings else 2) * self.vocab_size * d + encoder + decoder

    # PretrainedConfig's attributes: aliases map to fields; other names live in `extra` (so a config.json that
    # sets them round-trips and one that does not stays as it was), unset ones read transformers' defaults.
    def __getattr__(self, name: str) -> Any:  # called only when normal lookup fails
        if name.startswith("__") or name == "extra":
            raise AttributeError(name)
        if name in ATTRIBUTE_MAP:
            return getattr(self, ATTRIBUTE_MAP[name])
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        if name in COMMON_DEFAULTS:
            default = COMMON_DEFAULTS[name]
            return dict(default) if isinstance(default, dict) else default
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        name = ATTRIBUTE_MAP.get(name, name)
        if name not in self.__dataclass_fields__:
            self.extra[name] = value
            return
        initialised = "extra" in self.__dict__
        if initialised and name == "num_labels" and (self.id2label is None or len(self.id2label) != value):
            # transformers: new label count, new default names
            object.__setattr__(self, "id2label", {i: f"LABEL_{i}" for i in range(value)})
            object.__setattr__(self, "label2id", {v: k for k, v in self.id2label.items()})
        if initialised and name == "id2label" and value is not None:
            value = {int(k): v for k, v in value.items()}
            object.__setattr__(self, "num_labels", len(value))
        object.__setattr__(self, name, value)

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict and not self.torchscript

    # Serialization -----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> "MT5Config":
        """From a config.json dict; `kwargs` override its values (as in transformers)."""
        data = {**data, **kwargs}
        family = data.pop("model_type", None)
        if family is not None or data.get("architectures"):  # a bare dict of fields is this class's
            check_model_type(family, data.get("architectures"), cls)
        if "dtype" in data:   # 4.57 writes `dtype`, older versions `torch_dtype`
            dtype = data.pop("dtype")
            data["torch_dtype"] = data.get("torch_dtype") or dtype
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "MT5Config":
        return cls.from_dict(read_json(path))

    def to_json_string(self, use_diff: bool = True) -> str:
        """JSON with sorted keys as transformers writes it; use_diff drops values left at None."""
        data = self.to_dict()
        if use_diff:
            data = {k: v for k, v in data.items() if v is not None}
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = True) -> None:
        Path(path).write_text(self.to_json_string(use_diff), encoding="utf-8")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self.model_type}
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["dense_act_fn"] = self.dense_act_fn
        out["is_gated_act"] = self.is_gated_act
        out.update(self.extra)
        return out

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | os.PathLike, **hub_options: Any) -> "MT5Config":
        """Reads `config.json` from a local directory or a Hub repo (through the huggingface_hub cache)."""
        path = resolve_file(repo_or_dir, CONFIG_NAME, **hub_options)
        return cls.from_dict(read_json(path))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    def replace(self, **changes: Any) -> "MT5Config":
        return dataclasses.replace(self, **changes)


@accepts_pretrained_kwargs
@dataclass
class UMT5Config(MT5Config):
    """Configuration of a UMT5 model (google/umt5-small's shape); transformers' UMT5Config defaults to tied."""

    model_type: ClassVar[str] = "umt5"
    tie_word_embeddings: bool = True


@accepts_pretrained_kwargs
@dataclass
class T5Config(MT5Config):
    """Configuration of a `model_type: t5` checkpoint: the same network as mT5, with transformers' T5Config
    defaults (t5-small's shape: ReLU feed-forward, 32128 ids, embeddings tied to the head). aya-101, MADLAD-400
    and Flan-T5 set their own values (gated-gelu, untied; MADLAD: pad 1, eos 2, d_kv 128) in config.json."""

    model_type: ClassVar[str] = "t5"
    vocab_size: int = 32128
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): re-download or fix the file") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


FAMILIES = ("mt5", "umt5", "t5")
CLASS_PREFIX = {"mt5": "MT5", "umt5": "UMT5", "t5": "T5"}  # family -> its public classes' name prefix
# mT5 and T5 checkpoints run the same network: either config class reads the other's config.json (fine-tunes of
# mT5 saved as `model_type: t5` exist, and transformers loads across the two with a warning only).
INTERCHANGEABLE = {"mt5", "t5"}


def family_of(data: dict[str, Any]) -> str:
    """'mt5', 'umt5' or 't5' from a config dict: `model_type`, else `architectures` (google/umt5-small has none)."""
    model_type = data.get("model_type")
    if model_type in FAMILIES:
        return model_type
    if model_type is None:
        archs = data.get("architectures") or []
        for prefix, family in (("UMT5", "umt5"), ("MT5", "mt5"), ("T5", "t5")):
            if any(a.startswith(prefix) for a in archs):
                return family
        raise ValueError("config.json has neither `model_type` nor an mT5/UMT5/T5 entry in `architectures`: "
                         "add `\"model_type\": \"mt5\"`, `\"umt5\"` or `\"t5\"` to it")
    raise ValueError(f"config.json is for model_type {model_type!r}, not an mT5/UMT5 model or a T5 one (model_type "
                     "t5: aya-101, MADLAD-400, Flan-T5, t5-*), which is all this library runs: pick a checkpoint "
                     "whose model_type is mt5, umt5 or t5")


def check_model_type(model_type: str | None, architectures: list[str] | None, cls: type) -> None:
    family = family_of({"model_type": model_type, "architectures": architectures})
    if family != cls.model_type and {family, cls.model_type} != INTERCHANGEABLE:
        raise ValueError(f"config.json describes a {family} model but {cls.__name__} was asked for: use "
                         f"{config_class(family).__name__} or model.load_model()")


def config_class(family: str) -> type[MT5Config]:
    return {"umt5": UMT5Config, "t5": T5Config}.get(family, MT5Config)


# ------------------------------------------------------------------------------------------------------------
# Decoding settings
# ------------------------------------------------------------------------------------------------------------
@dataclass
class GenerationConfig:
    """Decoding settings with transformers' names and defaults (max 20 new tokens, greedy)."""

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    # Counts the decoder start token, as in transformers; its default 20 means "20 new tokens" (transformers adds
    # the decoder prompt's length to it unless a call passes max_length itself).
    max_length: int | None = 20
    min_length: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int = 0
    decoder_start_token_id: int = 0
    bos_token_id: int | None = None          # the encoder's input when generate() is called without one
    output_scores: bool = False
    return_dict_in_generate: bool = False
    seed: int | None = None
    cache_implementation: str | None = None  # None or "dynamic": see CACHE_IMPLEMENTATIONS
    use_cache: bool = True                   # False: each step decodes the whole prefix again (same tokens, slow)
    output_attentions: bool = False          # with return_dict_in_generate: per-step attention weights
    output_hidden_states: bool = False       # with return_dict_in_generate: per-step hidden states
    output_logits: bool | None = None        # with return_dict_in_generate: per-step raw logits
    remove_invalid_values: bool = False      # transformers' InfNanRemoveLogitsProcessor, after the other bans
    # True when these settings were derived from config.json, written into generation_config.json as transformers
    # does (its generate() then re-derives them when the model config changes).
    _from_model_config: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def from_model_config(cls, config: MT5Config, generation_json: dict | None = None) -> "GenerationConfig":
        """Defaults from the checkpoint: generation_config.json, else decoding keys in config.json (as
        csebuetnlp/mT5_multilingual_XLSum keeps its 4 beams, max_length 84, ... there)."""
        names = {f.name for f in dataclasses.fields(cls)}
        source = dict(generation_json) if generation_json else dict(config.extra)
        values = {k: v for k, v in source.items() if k in names and v is not None}
        values.setdefault("eos_token_id", config.eos_token_id)
        values.setdefault("pad_token_id", config.pad_token_id)
        values.setdefault("decoder_start_token_id", config.decoder_start_token_id)
        values["_from_model_config"] = bool(generation_json.get("_from_model_config")) if generation_json else True
        return cls(**values)

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | os.PathLike, config: MT5Config | None = None,
                        **hub_options: Any) -> "GenerationConfig":
        """Reads `generation_config.json` from a local directory or a Hub repo; without one, the decoding keys of
        `config.json` (read from the same place unless `config` is given). No weights are read."""
        path = resolve_file(repo_or_dir, GENERATION_CONFIG_NAME, optional=True, **hub_options)
        if config is None:
            data = read_json(resolve_file(repo_or_dir, CONFIG_NAME, **hub_options))
            config = config_class(family_of(data)).from_dict(data)
        return cls.from_model_config(config, read_json(path) if path is not None else None)

    # transformers' defaults where they differ from ours (we fill the token ids from the model config).
    _TRANSFORMERS_DEFAULTS: ClassVar[dict[str, Any]] = {"eos_token_id": None, "pad_token_id": None,
                                                        "decoder_start_token_id": None}

    def to_diff_dict(self) -> dict[str, Any]:
        """The settings that differ from transformers' GenerationConfig() defaults, keys sorted, as
        generation_config.json holds them (with `_from_model_config` when derived from config.json)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = self._TRANSFORMERS_DEFAULTS.get(f.name, f.default)
            if f.name == "_from_model_config":
                if value:
                    out[f.name] = True
            elif value != default:
                out[f.name] = value
        return dict(sorted(out.items()))

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes generation_config.json (only non-default values, as transformers writes it)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / GENERATION_CONFIG_NAME).write_text(self.to_json_string(), encoding="utf-8")

    def updated(self, **changes: Any) -> "GenerationConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"generate() got unknown argument(s) {unknown}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None or k in
                                            ("max_new_tokens", "max_length", "bad_words_ids", "seed")})

    @property
    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    def total_length(self, prompt: int = 1) -> int:
        """Decoder length limit, the `prompt` decoder tokens given (the start token, or decoder_input_ids)
        included; bounded by MAX_NEW_TOKENS_LIMIT new tokens. As transformers: max_length counts the prompt."""
        if self.max_new_tokens is not None:
            length = self.max_new_tokens + prompt
        elif self.max_length is not None and self.max_length != DEFAULT_MAX_LENGTH:
            length = self.max_length
        else:
            length = DEFAULT_MAX_LENGTH + prompt  # transformers: 20 new tokens by default
        if length - prompt > MAX_NEW_TOKENS_LIMIT:
            warnings.warn(f"max_new_tokens {length - prompt} is above the limit; generating at most "
                          f"{MAX_NEW_TOKENS_LIMIT}", stacklevel=4)
            length = MAX_NEW_TOKENS_LIMIT + prompt
        return length

    def min_total_length(self, prompt: int = 1) -> int:
        if self.min_new_tokens is not None:
            return self.min_new_tokens + prompt
        return self.min_length

    def validate(self) -> None:
        """Raises ValueError naming the bad setting and the allowed range."""
        checks = [
            (self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.max_length is None or self.max_length >= 2, "max_length must be at least 2 (start token + 1)"),
            (self.num_beams >= 1, "num_beams must be at least 1"),
            (self.num_return_sequences >= 1, "num_return_sequences must be at least 1"),
            (self.num_return_sequences <= self.num_beams or (self.do_sample and self.num_beams == 1),
             f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams}); "
             "raise num_beams or use do_sample=True"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 disables it), got {self.top_k}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0"),
            (self.length_penalty == self.length_penalty, "length_penalty must be a number"),
            (self.early_stopping in (True, False, "never"), "early_stopping must be True, False or 'never'"),
            (self.cache_implementation in CACHE_IMPLEMENTATIONS,
             f"cache_implementation={self.cache_implementation!r} is not supported: use None or 'dynamic' (the "
             "cache grows as decoding goes; static, offloaded and quantized caches are not implemented)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
