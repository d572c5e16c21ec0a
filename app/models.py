"""Loading checkpoints for the app: one shared cache, bounded in count and bytes, least recently used evicted.

Every loading failure becomes a `UserError` that says what was wrong and what to do; a checkpoint that lacks
the head a task needs is refused (its head would be random) rather than shown with meaningless outputs.
"""
from __future__ import annotations

import gc
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import model as mt5
from model.config import CONFIG_NAME, GenerationConfig, config_class, family_of, read_json
from model.hub import looks_like_path, resolve_file
from model.placement import available_devices

from .errors import UserError
from .limits import REQUEST_MB, Work, check_work, request_budget

DTYPES = ("auto", "float32", "bfloat16", "float16")
# Quantized weights: value -> (label in the page, model-layer options). "-all" also quantizes the shared
# embedding and lm_head (85% of mt5-small): the smallest models.
QUANTIZATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {}),
    "nf4": ("4-bit nf4 (bitsandbytes)", dict(load_in_4bit=True, bnb_4bit_quant_type="nf4")),
    "fp4": ("4-bit fp4 (bitsandbytes)", dict(load_in_4bit=True, bnb_4bit_quant_type="fp4")),
    "int4": ("4-bit int4, layers", dict(load_in_4bit=True, bnb_4bit_quant_type="int4")),
    "int4-all": ("4-bit int4, layers + embeddings",
                 dict(load_in_4bit=True, bnb_4bit_quant_type="int4", quantize_embeddings=True)),
    # the XXL checkpoints on a 16 GB Space: `wo` in int8 instead of full precision (bench/big.py)
    "int4-small": ("4-bit int4, layers + embeddings, wo in 8 bits (smallest)",
                   dict(load_in_4bit=True, bnb_4bit_quant_type="int4", quantize_embeddings=True, int8_wo=True)),
    "int8": ("8-bit int8, layers", dict(load_in_8bit=True)),
    "int8-all": ("8-bit int8, layers + embeddings", dict(load_in_8bit=True, quantize_embeddings=True)),
    # not exact: the fp32 model's tokens at most positions, not all (model.fast_mode; bench/generate.py)
    "fast": ("fast decoding: int8 decoder + head on the CPU (fast, tokens may differ)",
             dict(fast_decoding=True, dtype="float32")),
}


@dataclass(frozen=True)
class Head:
    """A model-layer head (`model.load_model(task=...)`): what the page calls it, the prefix of the weights that
    must come from the checkpoint for its outputs to mean anything, and what its decoder reads when attention is
    shown: "generated" (text-to-text: the output), "input" (the input ids again) or "" (encoder only)."""
    label: str
    prefix: str
    decoder: str


HEADS = {
    "generation": Head("language-model head", "lm_head.", "generated"),
    "classification": Head("classification head", "classification_head.", "input"),
    "token-classification": Head("token-classification head", "classifier.", ""),
    "question-answering": Head("question-answering head", "qa_outputs.", "input"),
}
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class ModelRequest:
    """What to load: a Hub id or local folder, for a model-layer task (head), with placement options."""
    source: str
    head: str = "generation"
    dtype: str = "auto"
    device: str = "auto"
    quantization: str = "none"     # a key of QUANTIZATIONS
    revision: str | None = None

    def options(self) -> dict[str, Any]:
        """Keyword options for `model.load_model` (only those that differ from its defaults)."""
        opts: dict[str, Any] = {}
        if self.dtype != "auto":
            opts["dtype"] = self.dtype
        if self.device not in ("auto", "") and self.quantization != "fast":   # fast decoding runs on the CPU
            opts["device_map"] = self.device
        opts.update(QUANTIZATIONS.get(self.quantization, ("", {}))[1])
        if self.revision:
            opts["revision"] = self.revision
        return opts


@dataclass
class Loaded:
    """A loaded model with its tokenizer and where it came from."""
    request: ModelRequest
    model: Any
    tokenizer: Any
    family: str
    nbytes: int
    warnings: list[str] = field(default_factory=list)
    request_mb: int = REQUEST_MB    # the deployment's per-request budget (Settings.request_mb; see app.limits)
    batcher: Any = None             # the app context's request batcher (app.batching.Batcher); None: alone

    def afford(self, work: Work, advice: str) -> int:
        """Refuses `work` (UserError naming the limit) when it would take more working memory than one request
        may on this deployment, for this model's size; returns the estimate in bytes. Called before the model
        runs."""
        return check_work(work, self.model.config, request_budget(self.nbytes, self.request_mb), advice)

    @property
    def head(self) -> str:
        """The model-layer head it was loaded with (a key of HEADS): the tasks check this, not the model's
        attributes."""
        return self.request.head

    def describe(self) -> str:
        """One line on the weights as loaded, from the model layer's memory_footprint: e.g. "google/mt5-small ·
        mt5 · 189 MB of weights on cpu (embeddings 64 MB, lm_head 64 MB, transformer 61 MB) · float32 · 4-bit
        int4, layers + embeddings"."""
        source = self.request.source
        parts = [Path(source).name if Path(source).exists() else source, self.family]  # a folder: its name
        quantization = self.quantization()
        try:
            if quantization == "none":   # quantized weights are buffers, not parameters
                parts.append(f"{self.model.num_parameters() / 1e6:.1f}M parameters")
            footprint = self.model.memory_footprint()
        except Exception:  # noqa: BLE001 - a model without these reports what it can
            footprint = {}
        if footprint:
            devices = sorted({d for by_device in footprint.values() for d in by_device})
            order = ["embeddings", "lm_head", "transformer", "heads"]
            names = sorted(footprint, key=lambda n: order.index(n) if n in order else len(order))
            pieces = ", ".join(f"{name} {megabytes(sum(footprint[name].values()))}" for name in names)
            parts.append(f"{megabytes(self.nbytes)} of weights on {'+'.join(devices)} ({pieces})")
        try:
            parts.append(str(self.model.dtype).removeprefix("torch."))
        except Exception:  # noqa: BLE001
            pass
        if quantization != "none":
            parts.append(QUANTIZATIONS[quantization][0] if quantization in QUANTIZATIONS else bits_label(quantization))
        return " · ".join(parts)

    def quantization(self) -> str:
        """The quantization asked for, else the checkpoint's own ("int8 (checkpoint)"), else "none"."""
        if self.request.quantization != "none":
            return self.request.quantization
        saved = (getattr(getattr(self.model, "config", None), "extra", None) or {}).get("quantization_config") or {}
        method = saved.get("quant_method")
        if method == "bitsandbytes":
            return f"{saved.get('bnb_4bit_quant_type', 'nf4')} (checkpoint)"
        if method:
            return f"{method.removeprefix('mt5studio-')} (checkpoint)"
        return "none"

    def provenance(self) -> dict[str, Any]:
        """What an annotation or a result should record about the model."""
        return {**asdict(self.request), "quantization": self.quantization(), "family": self.family,
                "loaded_dtype": str(self.model.dtype).removeprefix("torch."), "parameters": self.model.num_parameters()}


@dataclass
class ModelPolicy:
    """Which checkpoints a deployment serves: anything, or (locked) only the listed ones."""
    locked: bool = False
    allowed: frozenset[str] = frozenset()

    def check(self, source: str) -> None:
        if self.locked and source not in self.allowed:
            # Hub ids and short names only: a listed server folder is served but its path is not shown.
            public = sorted(name for name in self.allowed if not looks_like_path(name) and not Path(name).is_absolute())
            hidden = len(self.allowed) - len(public)
            names = ", ".join(public) or "none"
            more = f" (and {hidden} local checkpoint{'s' if hidden > 1 else ''} of this server)" if hidden else ""
            raise UserError(f"This deployment only serves its listed models, and {source!r} is not one of them. "
                            f"Pick one of: {names}{more}.")

    def token(self, source: str) -> bool | None:
        """The Hub token argument for `source`: None (the deployment's HF_TOKEN, as huggingface_hub finds it)
        for the ids the deployment lists, False (download anonymously) for any id a visitor typed, so a
        visitor cannot reach the owner's private or gated repos through the deployment's token."""
        return None if source in self.allowed else False


def check_request(request: ModelRequest) -> str:
    """Validates the request at the boundary; returns the cleaned source."""
    source = (request.source or "").strip()
    if not source:
        raise UserError("No model given: type a Hub id (owner/name) or the path of a local checkpoint folder.")
    if request.dtype not in DTYPES:
        raise UserError(f"Unknown dtype {request.dtype!r}: use one of {', '.join(DTYPES)}.")
    if request.head not in HEADS:
        raise UserError(f"Unknown head {request.head!r}: use one of {', '.join(HEADS)}.")
    if request.quantization not in QUANTIZATIONS:
        raise UserError(f"Unknown quantization {request.quantization!r}: use one of {', '.join(QUANTIZATIONS)}.")
    if request.quantization == "fast" and (request.dtype not in ("auto", "float32") or
                                           request.device not in ("auto", "", "cpu")):
        raise UserError("Fast decoding quantizes the decoder from float32 weights on the CPU: set dtype to auto "
                        "or float32 and device to auto or cpu.")
    if request.device not in ("auto", "", *available_devices()):
        raise UserError(f"Unknown or unusable device {request.device!r}: use one of "
                        f"{', '.join(['auto', *available_devices()])}.")
    return source


def check_size(source: str, config: mt5.MT5Config, request: ModelRequest, max_bytes: int | None) -> None:
    """Refuses, from config.json alone, a model whose weights would not fit the deployment's model memory
    (MT5_STUDIO_CACHE_MB): the whole encoder-decoder's parameters at the fewest bytes each can take as asked
    (4-bit: half a byte), so a model that fits is not refused for its dtype or quantization."""
    if max_bytes is None:
        return
    quant = request.quantization
    dtype = config.torch_dtype if request.dtype == "auto" else request.dtype
    per_param = 0.5 if quant.startswith(("nf4", "fp4", "int4")) else 1 if quant.startswith("int8") else (
        2 if str(dtype).removeprefix("torch.") in ("bfloat16", "float16") else 4)
    need = int(config.num_parameters() * per_param)
    if need > max_bytes:
        raise UserError(f"{source!r} would take at least {megabytes(need)} of weights ({config.num_parameters():,} "
                        f"parameters in its config.json), more than this deployment's model memory "
                        f"({megabytes(max_bytes)}, MT5_STUDIO_CACHE_MB): pick a smaller checkpoint"
                        f"{' or quantize it' if quant == 'none' else ''}.")


def load_checkpoint(request: ModelRequest, progress: Progress | None = None, *, offline: bool = False,
                    folders: Mapping[str, Path] | None = None, token: bool | None = False,
                    max_bytes: int | None = None) -> Loaded:
    """Loads tokenizer and model for `request`; every failure is a UserError with what to do.

    `offline`: only the local Hugging Face cache is read (`local_files_only`). `folders` maps short names (the
    demo checkpoints' "demo/generation") to the folders they are read from: messages and the Loaded's request
    keep the short name, so no server path reaches the page. `token`: the Hub token argument (False: anonymous,
    None: the deployment's own; see `ModelPolicy.token`). `max_bytes`: weights larger than this, estimated
    from config.json, are refused before anything is built. The config is read first (small): a missing repo,
    a model of another type or one too large is reported before anything large is downloaded."""
    source = check_request(request)
    where = str((folders or {}).get(source, source))
    say = progress or (lambda fraction, text: None)
    say(0.02, f"Reading the config of {source}")
    config, _ = read_configs(source, request.revision, offline=offline, folders=folders, token=token)
    check_size(source, config, request, max_bytes)
    say(0.05, f"Loading the tokenizer of {source}")
    try:
        tokenizer = mt5.MT5Tokenizer.from_pretrained(where, revision=request.revision, local_files_only=offline,
                                                     token=token)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"Could not load the tokenizer of {source!r}: {e}") from e
    say(0.2, f"Loading the weights of {source} (downloading them first if they are not cached)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = mt5.load_model(where, task=request.head, output_loading_info=True, local_files_only=offline,
                                         token=token, **request.options())
    except mt5.CheckpointNotFoundError as e:
        raise UserError(f"Could not find the weights of {source!r}: {e}") from e
    except mt5.AlreadyQuantizedError as e:   # before CheckpointError, its base: the checkpoint is fine
        raise already_quantized(source) from e
    except mt5.CheckpointError as e:
        raise UserError(f"The checkpoint {source!r} is damaged or incomplete: {e}. Download it again or pick "
                        "another.") from e
    except ValueError as e:
        raise UserError(f"Cannot use {source!r}: {e}") from e
    except (ImportError, TypeError, RuntimeError, OSError) as e:
        raise UserError(f"Loading {source!r} failed ({type(e).__name__}: {e}). Try dtype 'auto', device "
                        "'auto' and 4-bit off.") from e
    refuse_missing_head(source, request.head, info.missing_keys)
    say(0.95, f"{source} loaded")
    return Loaded(request, model, tokenizer, model.config.model_type, weight_bytes(model),
                  [str(w.message) for w in caught])


def refuse_missing_head(source: str, head: str, missing: list[str]) -> None:
    """A checkpoint whose head weights are not in it would give random outputs: refuse it, by name."""
    if not missing:
        return
    what, prefix = (HEADS[head].label, HEADS[head].prefix) if head in HEADS else ("model", "")
    head_keys = [k for k in missing if k.removeprefix("transformer.").startswith(prefix)]
    shown = ", ".join((head_keys or missing)[:4])
    if head_keys:
        raise UserError(f"{source!r}: this checkpoint has no {what} ({shown} not in it), so its outputs would be "
                        f"random. Pick a checkpoint fine-tuned for this task.")
    raise UserError(f"{source!r} lacks weights this model needs ({shown}): pick a complete checkpoint.")


def bits_label(quantization: str) -> str:
    """A quantization key or a checkpoint's ("int8 (checkpoint)") with its width: "8-bit int8 (checkpoint)"."""
    return f"{'8-bit' if quantization.startswith('int8') else '4-bit'} {quantization}"


def megabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def weight_bytes(model) -> int:
    """Bytes of the model's weights (from the model layer's memory_footprint when it has one)."""
    if hasattr(model, "memory_footprint"):
        try:
            return sum(sum(by_device.values()) for by_device in model.memory_footprint().values())
        except Exception:  # noqa: BLE001 - fall back to counting parameters
            pass
    seen = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in seen.values())


class ModelCache:
    """Loaded models shared by every session: at most `max_models`, and at most `max_bytes` of weights (a
    single model larger than that is still kept, alone). The least recently used go first.

    Loads of the same request wait for one another instead of loading twice; different requests load in
    parallel. Thread-safe: Gradio runs handlers in worker threads.
    """

    def __init__(self, max_models: int = 3, max_bytes: int = 6 * 2**30, policy: ModelPolicy | None = None,
                 loader: Callable[[ModelRequest, Progress | None], Loaded] | None = None, *, offline: bool = False,
                 folders: Mapping[str, Path] | None = None, request_mb: int = REQUEST_MB, batcher: Any = None):
        """`offline`: read only the local Hugging Face cache; `folders`: short names of local checkpoints (the
        demo's) and where they are (see `load_checkpoint`); `request_mb`: one request's working-memory budget
        (`Loaded.afford`); `batcher`: the deployment's request batcher (app.batching.Batcher), handed to every
        model it loads (None: each request decodes alone)."""
        self.max_models, self.max_bytes, self.request_mb = max_models, max_bytes, request_mb
        self.batcher = batcher
        self.policy = policy or ModelPolicy()
        self.offline, self.folders = offline, dict(folders or {})
        self.loader = loader or (lambda request, progress: load_checkpoint(
            request, progress, offline=offline, folders=self.folders, token=self.policy.token(request.source),
            max_bytes=self.max_bytes))
        self._models: OrderedDict[ModelRequest, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[ModelRequest, threading.Lock] = {}

    def get(self, request: ModelRequest, progress: Progress | None = None) -> Loaded:
        request = ModelRequest(**{**asdict(request), "source": (request.source or "").strip()})
        self.policy.check(request.source)
        with self._lock:
            if request in self._models:
                self._models.move_to_end(request)
                return self._models[request]
            gate = self._loading.setdefault(request, threading.Lock())
        with gate:
            with self._lock:
                if request in self._models:
                    return self._models[request]
            try:
                loaded = self.loader(request, progress)
                loaded.request_mb, loaded.batcher = self.request_mb, self.batcher
            finally:  # a failed load leaves no gate behind (an open deployment sees many bad ids)
                with self._lock:
                    self._loading.pop(request, None)
            with self._lock:
                self._models[request] = loaded
                self._evict()
            return loaded

    def _evict(self) -> None:
        dropped = False
        while len(self._models) > 1 and (len(self._models) > self.max_models or self.nbytes() > self.max_bytes):
            self._models.popitem(last=False)
            dropped = True
        if dropped:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def loaded(self) -> list[str]:
        """The kept models, least recently used first (for the status line)."""
        with self._lock:
            return [f"{r.source} ({r.head})" for r in self._models]

    def generation_config(self, source: str) -> GenerationConfig:
        """`source`'s decoding defaults (json files only), as this cache would load it: the policy checked
        first, short names resolved, offline kept."""
        return read_generation_config(source, policy=self.policy, offline=self.offline, folders=self.folders)


def read_generation_config(source: str, revision: str | None = None, policy: ModelPolicy | None = None, *,
                           offline: bool = False, folders: Mapping[str, Path] | None = None) -> GenerationConfig:
    """The checkpoint's decoding defaults from its json files alone (no weights are read): a
    `model.config.GenerationConfig`. Errors are UserErrors; a `policy` refuses unlisted sources first and
    decides the Hub token (without one: anonymous). `offline` and `folders` as for `load_checkpoint`."""
    source = (source or "").strip()
    if policy is not None:
        policy.check(source)
    token = policy.token(source) if policy is not None else False
    return read_configs(source, revision, offline=offline, folders=folders, token=token)[1]


def read_configs(source: str, revision: str | None = None, *, offline: bool = False,
                 folders: Mapping[str, Path] | None = None,
                 token: bool | None = False) -> tuple[mt5.MT5Config, GenerationConfig]:
    """config.json and the decoding defaults of `source` (json files only); errors are UserErrors."""
    where = str((folders or {}).get(source, source))
    hub = {"revision": revision, "local_files_only": offline, "token": token}
    try:
        data = read_json(resolve_file(where, CONFIG_NAME, **hub))
        config = config_class(family_of(data)).from_dict(data)
        gen_file = resolve_file(where, "generation_config.json", optional=True, **hub)
        return config, GenerationConfig.from_model_config(config, read_json(gen_file) if gen_file else None)
    except mt5.CheckpointNotFoundError as e:
        raise UserError(f"Could not find the checkpoint {source!r}: {e}") from e
    except mt5.AlreadyQuantizedError as e:
        raise already_quantized(source) from e
    except ValueError as e:
        raise UserError(f"Cannot use {source!r}: {e}") from e


def already_quantized(source: str) -> UserError:
    return UserError(f"{source!r} is already quantized: set 'Quantized weights' to none to load it as it is.")
