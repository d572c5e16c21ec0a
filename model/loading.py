"""Loading and saving Hub checkpoints: a key table plus checks.

The model is built on the meta device (no memory, no time spent on random weights), the checkpoint's tensors
are read from safetensors or `pytorch_model.bin` (with `torch.load(weights_only=True)`: a pickle carrying code
is refused, never run), keys are mapped to ours, and assigned. Missing and unexpected names are reported by name.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import (
    CLASS_PREFIX,
    COMMON_DEFAULTS,
    CONFIG_NAME,
    INTERCHANGEABLE,
    GENERATION_KEYS,
    GenerationConfig,
    MT5Config,
    family_of,
    read_json,
)
from .fast_mode import make_fast
from .hub import CheckpointError, CheckpointNotFoundError, hub_options, resolve_file
from .placement import check_model_device, place, warn_slow_dtype
from .quant import (
    INT4_METHOD,
    INT8_METHOD,
    QuantOptions,
    load_bnb_modules,
    pop_bnb_modules,
    prepare_quantized_model,
)

SAFE_NAME, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_NAME, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"

# Checkpoint keys that carry nothing we use: copies of `shared`, and a bias table that old T5 conversions put on
# the first cross-attention layer (cross-attention has no position bias).
IGNORED_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
# Weights that belong to a task head rather than the transformer: absent ones are initialised (a plain checkpoint
# loads into a head model), extra ones are dropped (a head checkpoint loads into a plain model).
HEAD_PREFIXES = ("lm_head.", "classification_head.", "classifier.", "qa_outputs.")


class AlreadyQuantizedError(CheckpointError):
    """A quantized checkpoint loaded with load_in_4bit / load_in_8bit: it must be loaded as it is."""


class LoadingInfo(dict):
    """What loading did beyond a one-to-one copy, by key name: transformers' loading-info dict (`missing_keys`:
    initialised at random, task heads only; `unexpected_keys`: in the checkpoint, not used; `mismatched_keys`:
    skipped and initialised with ignore_mismatched_sizes=True; `error_msgs`), each also an attribute, plus
    `mismatched_shapes` ((checkpoint, model) shape per mismatched key) and `source_files`."""

    def __init__(self, source_files: list[str] | None = None):
        super().__init__(missing_keys=[], unexpected_keys=[], mismatched_keys=[], error_msgs=[])
        self.mismatched_shapes: list[tuple[tuple, tuple]] = []
        self.source_files = list(source_files or [])

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value) -> None:
        if name in self:
            self[name] = value
        else:
            super().__setattr__(name, value)


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------
def weight_files(repo_or_dir: str | os.PathLike, **hub: Any) -> list[Path]:
    """The checkpoint's weight files, preferring safetensors; shards in index order."""
    for single, index in ((SAFE_NAME, SAFE_INDEX), (BIN_NAME, BIN_INDEX)):
        index_path = resolve_file(repo_or_dir, index, optional=True, **hub)
        if index_path is not None:
            shards = sorted(set(read_json(index_path).get("weight_map", {}).values()))
            if not shards:
                raise CheckpointError(f"{index_path} has an empty weight_map")
            return [resolve_file(repo_or_dir, s, **hub) for s in shards]
        path = resolve_file(repo_or_dir, single, optional=True, **hub)
        if path is not None:
            return [path]
    raise CheckpointNotFoundError(f"{repo_or_dir} has no weights: looked for {SAFE_NAME}, {SAFE_INDEX}, "
                                  f"{BIN_NAME} and {BIN_INDEX}")


def read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (key, tensor) from one safetensors or .bin file, on CPU."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except SafetensorError as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}): it may be truncated or "
                                  "corrupt; delete it and download again") from e
        return
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # PyTorch's pre-1.6 (non-zip) format cannot be memory-mapped: read it into memory, still weights-only
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} was refused: its pickle holds more than tensors (code or objects), which "
                              "is not loaded for safety. Convert it to safetensors from a trusted source. "
                              f"({e})") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({e}): it may be truncated") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    yield from state.items()


class LazyTensor:
    """A safetensors tensor not read yet: its shape, and `load()` reads it (one tensor at a time, so a checkpoint
    never sits in memory whole: the model is filled, and quantized, tensor by tensor)."""

    def __init__(self, path: Path, key: str, shape: tuple[int, ...]):
        self.path, self.key, self.shape = path, key, torch.Size(shape)

    def load(self, dtype: torch.dtype | None = None, chunk_bytes: int = 64 * 2 ** 20) -> torch.Tensor:
        """The tensor; with a floating `dtype` other than the file's, converted `chunk_bytes` of rows at a time
        into the result, so an fp32 file read for a bf16 model never exists whole in fp32 (mt0-xxl's embedding:
        4.1 GB in fp32, 2.0 GB in bf16)."""
        try:
            with safe_open(str(self.path), framework="pt") as f:
                part = f.get_slice(self.key)
                stored = SAFETENSORS_DTYPES.get(part.get_dtype())
                small = self.shape.numel() * (stored.itemsize if stored else 4) <= 4 * chunk_bytes
                if dtype is None or stored is None or stored == dtype or not stored.is_floating_point \
                        or len(self.shape) == 0 or small:
                    tensor = f.get_tensor(self.key)
                    return tensor if dtype is None or not tensor.is_floating_point() else tensor.to(dtype)
                out = torch.empty(self.shape, dtype=dtype)
                rows = max(1, chunk_bytes // max(1, out[0].numel() * stored.itemsize))
                for start in range(0, self.shape[0], rows):
                    out[start:start + rows] = part[start:start + rows]
                return out
        except SafetensorError as e:
            raise CheckpointError(f"{self.path} is not a readable safetensors file ({e}): it may be truncated or "
                                  "corrupt; delete it and download again") from e


SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def materialize(tensor: "torch.Tensor | LazyTensor", dtype: torch.dtype | None = None) -> torch.Tensor:
    return tensor.load(dtype) if isinstance(tensor, LazyTensor) else tensor


def read_lazy(path: Path) -> Iterator[tuple[str, "torch.Tensor | LazyTensor"]]:
    """(key, tensor) of one file without reading safetensors data (LazyTensor); a .bin is memory-mapped."""
    if path.suffix != ".safetensors":
        yield from read_tensors(path)
        return
    for key, shape in read_shapes(path).items():
        yield key, LazyTensor(path, key, shape)


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape from one file without reading its tensors: the safetensors header, or a memory-mapped .bin."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except SafetensorError as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}): it may be truncated or "
                                  "corrupt; delete it and download again") from e
    return {key: tuple(t.shape) for key, t in read_tensors(path)}


BLOCK = re.compile(r"^(?:transformer\.)?(encoder|decoder)\.block\.(\d+)\.")


def check_config_fits(config: MT5Config, shapes: dict[str, tuple[int, ...]], source: str,
                      ignore_mismatched_sizes: bool = False) -> None:
    """Compares config.json with the checkpoint's key names and shapes before any model is built: a config
    that claims far more than its weights (100,000 layers over a 2-layer checkpoint) would otherwise tie up a
    worker for minutes building modules that the key check then refuses."""
    blocks: dict[str, set[int]] = {"encoder": set(), "decoder": set()}
    for key in shapes:
        m = BLOCK.match(key)
        if m:
            blocks[m.group(1)].add(int(m.group(2)))
    wanted = {"encoder": config.num_layers, "decoder": config.num_decoder_layers}
    for stack, found in blocks.items():
        if stack == "decoder" and not found:
            continue   # an encoder-only checkpoint: the decoder is not loaded
        # Fewer blocks than the config says is refused here; extra blocks are named by check_keys later.
        if len(found & set(range(wanted[stack]))) < wanted[stack]:
            raise CheckpointError(f"{source}: config.json says {wanted[stack]:,} {stack} layer(s) "
                                  f"({'num_layers' if stack == 'encoder' else 'num_decoder_layers'}) but the "
                                  f"weights hold {len(found):,}: use the config.json saved with these weights")
    if config.extra.get("quantization_config") or ignore_mismatched_sizes:
        return   # quantized layouts store other shapes; check_keys judges them once the model is built
    d, inner = config.d_model, config.inner_dim
    expect = {"shared.weight": (config.vocab_size, d),
              "encoder.block.0.layer.0.SelfAttention.q.weight": (inner, d),
              "encoder.block.0.layer.1.DenseReluDense.wo.weight": (d, config.d_ff)}
    for key, shape in expect.items():
        found = shapes.get(key, shapes.get(f"transformer.{key}"))
        if found is not None and found != shape:
            raise CheckpointError(f"{source}: config.json and the weights disagree: {key} has shape {found} but "
                                  f"the config implies {shape} (vocab_size, d_model, num_heads x d_kv, d_ff)")


# ------------------------------------------------------------------------------------------------------------
# Key table
# ------------------------------------------------------------------------------------------------------------
def base_key(key: str) -> str:
    """Checkpoint key -> key relative to the transformer (head models prefix it with `transformer.`)."""
    return key[len("transformer."):] if key.startswith("transformer.") else key


def target_key(model: torch.nn.Module, key: str) -> str:
    prefix = model.base_model_prefix
    if not prefix or key.startswith(HEAD_PREFIXES):
        return key
    return f"{prefix}.{key}"


def match_feed_forward(config: MT5Config, tensors: dict[str, torch.Tensor], source: str) -> MT5Config:
    """The weights decide gated vs plain feed-forward (google/umt5-base's config says relu; its weights are gated)."""
    gated = any(k.endswith("DenseReluDense.wi_0.weight") for k in tensors)
    plain = any(k.endswith("DenseReluDense.wi.weight") for k in tensors)
    if gated == config.is_gated_act or gated == plain:
        return config
    act = config.feed_forward_proj.split("-")[-1]
    fixed = ("gated-gelu" if act == "relu" else f"gated-{act}") if gated else act
    warnings.warn(f"{source}: config.json says feed_forward_proj={config.feed_forward_proj!r} but the weights are "
                  f"{'gated (wi_0/wi_1)' if gated else 'not gated (wi)'}; using {fixed!r}", stacklevel=3)
    return config.replace(feed_forward_proj=fixed)


def map_checkpoint(model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                   info: LoadingInfo) -> dict[str, torch.Tensor]:
    """Maps checkpoint keys to the model's; embed_tokens copies stand in when `shared.weight` is absent."""
    wanted = set(model.state_dict().keys())
    mapped, spare = {}, {}
    for key, tensor in tensors.items():
        key = base_key(key)
        if key in IGNORED_KEYS:
            spare[key] = tensor
            continue
        ours = target_key(model, key)
        if ours in wanted:
            mapped[ours] = tensor
        else:
            info.unexpected_keys.append(key)
    shared = target_key(model, "shared.weight")
    if shared in wanted and shared not in mapped:
        # Never lm_head: it is a different matrix in untied checkpoints.
        for copy in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            if copy in spare:
                mapped[shared] = spare[copy]
                break
    return mapped


def check_keys(model: torch.nn.Module, mapped: dict[str, torch.Tensor], info: LoadingInfo, source: str,
               ignore_mismatched_sizes: bool = False) -> None:
    """Raises on missing transformer weights or on unexplained extra keys; records head keys to initialise.

    Weights whose shape differs from the model's are an error, or with `ignore_mismatched_sizes` are dropped from
    `mapped` (so they get initialised) and listed in info.mismatched_keys, as transformers does."""
    # Modules a quantized checkpoint filled before this (bitsandbytes 4-bit) are real already: only meta
    # tensors still need the checkpoint's weights.
    state = {k: v for k, v in model.state_dict().items() if v.is_meta}
    tied = tied_keys(model)
    missing = [k for k in state if k not in mapped and k not in tied]
    # A head's parameters can start at random; a quantized head's buffers cannot.
    buffers = {k for k, _ in model.named_buffers()}
    info.missing_keys = [k for k in missing if k.startswith(HEAD_PREFIXES) and k not in buffers]
    absent = [k for k in missing if not k.startswith(HEAD_PREFIXES) or k in buffers]
    if absent:
        raise CheckpointError(f"{source} lacks {len(absent)} weight(s) the model needs: {', '.join(absent[:12])}"
                              f"{' …' if len(absent) > 12 else ''}. Is config.json the one saved with these weights?")
    # Another head's weights and the decoder (when loading into an encoder-only model) are expected extras.
    known = lambda k: k.startswith(HEAD_PREFIXES) or (k.startswith("decoder.") and not hasattr(
        getattr(model, model.base_model_prefix, model), "decoder"))
    unexplained = [k for k in info.unexpected_keys if not known(k)]
    if unexplained:
        raise CheckpointError(f"{source} has {len(unexplained)} weight(s) this model does not have: "
                              f"{', '.join(unexplained[:12])}{' …' if len(unexplained) > 12 else ''}. "
                              "Does config.json (num_layers, feed_forward_proj, ...) match the weights?")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if ignore_mismatched_sizes:
        for k in [k for k, t in mapped.items() if tuple(t.shape) != shapes[k]]:
            info.mismatched_keys.append(k)
            info.mismatched_shapes.append((tuple(mapped.pop(k).shape), shapes[k]))
    wrong = [f"{k} has shape {tuple(t.shape)} but the config implies {shapes[k]}"
             for k, t in mapped.items() if tuple(t.shape) != shapes[k]]
    if wrong:
        raise CheckpointError(f"{source}: config.json and the weights disagree: {'; '.join(sorted(wrong)[:6])}")


def tied_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys that alias another parameter (the tied lm_head)."""
    seen, aliases = {}, set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            aliases.add(key)
        seen[id(tensor)] = key
    return aliases


# ------------------------------------------------------------------------------------------------------------
# from_pretrained / save_pretrained
# ------------------------------------------------------------------------------------------------------------
def resolve_dtype(dtype: Any, config: MT5Config) -> torch.dtype:
    """None -> float32 (transformers' default); "auto" -> the checkpoint's torch_dtype; names or dtypes."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        dtype = config.torch_dtype or "float32"
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), None)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, bfloat16, float16 or 'auto', got {dtype!r}")
    return dtype


def load_config(cls: type, repo_or_dir: str | os.PathLike, config: MT5Config | None, hub: dict) -> MT5Config:
    if config is not None:
        return config
    data = read_json(resolve_file(repo_or_dir, CONFIG_NAME, **hub))
    family, wanted = family_of(data), cls.config_class.model_type
    if family != wanted and {family, wanted} != INTERCHANGEABLE:
        name = cls.__name__.removeprefix("UMT5").removeprefix("MT5").removeprefix("T5")
        raise ValueError(f"{repo_or_dir} holds a {family} checkpoint but {cls.__name__} was asked for: use "
                         f"{CLASS_PREFIX[family]}{name} or model.load_model()")
    return cls.config_class.from_dict(data)


def from_pretrained(cls: type, repo_or_dir: str | os.PathLike, *, config: MT5Config | None = None,
                    dtype: Any = None, torch_dtype: Any = None, output_loading_info: bool = False,
                    device_map: Any = None, max_memory: dict | None = None,
                    offload_folder: str | os.PathLike | None = None, **options: Any):
    """Builds `cls` on the meta device and fills it from the checkpoint's weights (see module docstring).

    dtype: None (float32), "auto" (the checkpoint's), float32, bfloat16 or float16 (`wo` then stays float32).
    device_map: a device ("cpu", "cuda", "cuda:1"), a preset ("auto", "balanced", "balanced_low_0",
    "sequential") or {module name: device}; with max_memory and offload_folder for CPU/disk offload.
    4-bit: load_in_4bit=True, bnb_4bit_quant_type="nf4"|"fp4"|"int4", bnb_4bit_compute_dtype,
    bnb_4bit_use_double_quant, quantize_embeddings (see model.quant). 8-bit: load_in_8bit=True (per-row int8
    on PyTorch kernels), with quantize_embeddings. fast_decoding=True: int8 decoder layers and head on fbgemm
    (model.fast_mode; tokens may differ from the fp32 model's).
    """
    check_model_device(device_map)
    ignore_mismatched = bool(options.pop("ignore_mismatched_sizes", False))
    fast = bool(options.pop("fast_decoding", False))
    quant = QuantOptions.pop_from(options)
    if fast and (quant is not None or device_map is not None or dtype not in (None, "float32", torch.float32)):
        raise ValueError("fast_decoding=True quantizes the decoder itself (int8, CPU, from float32 weights): drop "
                         "load_in_4bit/load_in_8bit, device_map and dtype")
    hub = hub_options(options)
    config = with_label_options(load_config(cls, repo_or_dir, config, hub), options)
    dtype = resolve_dtype(dtype if dtype is not None else torch_dtype, config)
    model, info = build_and_fill(cls, repo_or_dir, config, dtype, quant, hub, ignore_mismatched)
    if quant is not None:
        quant.apply(model).eval()   # what was not quantized while loading (tied weights), and the config
    if device_map is not None or dtype == torch.float16:
        warn_slow_dtype(dtype, device_map or "cpu")
    if device_map is not None:
        place(model, device_map, max_memory, offload_folder)
    if fast:
        make_fast(model.eval())
    if hasattr(model, "generate"):
        model.generation_config = GenerationConfig.from_pretrained(repo_or_dir, config=model.config, **hub)
    if info.missing_keys:
        warnings.warn(f"{cls.__name__}: {', '.join(info.missing_keys)} not in the checkpoint, initialised at "
                      "random: train this head before trusting its outputs", stacklevel=2)
    if info.mismatched_keys:
        lines = "\n".join(f"- {k}: found shape {tuple(a)} in the checkpoint and {tuple(b)} in the model instantiated"
                          for k, (a, b) in zip(info.mismatched_keys, info.mismatched_shapes))
        warnings.warn(f"Some weights of {cls.__name__} were not initialized from the model checkpoint at "
                      f"{repo_or_dir} and are newly initialized because the shapes did not match:\n{lines}\nYou "
                      "should probably TRAIN this model on a down-stream task to be able to use it for predictions "
                      "and inference.", stacklevel=2)
    return (model, info) if output_loading_info else model


def with_label_options(config: MT5Config, options: dict[str, Any]) -> MT5Config:
    """Applies num_labels / id2label / label2id / problem_type overrides, then (as transformers) any other
    keyword that names a config attribute (output_attentions=True, ...); anything else left is an error."""
    if "num_labels" in options:  # new labels: drop the old names
        config = config.replace(num_labels=options.pop("num_labels"), id2label=None, label2id=None)
    for key in ("id2label", "label2id", "problem_type"):
        if key in options:
            config = config.replace(**{key: options.pop(key)})
    attributes = [k for k in options if k != "extra" and hasattr(config, k)]
    if attributes:
        config = config.replace()
        for key in attributes:
            setattr(config, key, options.pop(key))
    if options:
        raise TypeError(f"from_pretrained got unknown option(s) {sorted(options)}")
    return config


def build_and_fill(cls: type, repo_or_dir, config: MT5Config, dtype: torch.dtype, quant: QuantOptions | None,
                   hub: dict, ignore_mismatched_sizes: bool = False) -> tuple[torch.nn.Module, LoadingInfo]:
    """The meta-device model, in the checkpoint's quantized layout if it has one (int4, int8, bitsandbytes 4-bit),
    filled with its weights; with `quant`, each layer is quantized as soon as its weight is read."""
    quantizing = quant is not None
    files = weight_files(repo_or_dir, **hub)
    check_config_fits(config, {k: s for f in files for k, s in read_shapes(f).items()}, str(repo_or_dir),
                      ignore_mismatched_sizes)
    info = LoadingInfo(source_files=[str(f) for f in files])
    tensors = {key: tensor for f in files for key, tensor in read_lazy(f)}
    config = match_feed_forward(config, tensors, str(repo_or_dir))
    with torch.device("meta"):
        model = cls(config)
    saved_quant = config.extra.get("quantization_config") or {}
    if saved_quant.get("quant_method") in (INT4_METHOD, INT8_METHOD):
        if quantizing:
            bits = "int4" if saved_quant["quant_method"] == INT4_METHOD else "int8"
            raise AlreadyQuantizedError(f"{repo_or_dir} is already quantized to {bits}: load it without load_in_4bit / "
                             "load_in_8bit")
        prepare_quantized_model(model, saved_quant, dtype)
    elif saved_quant.get("quant_method") == "bitsandbytes" and saved_quant.get("load_in_4bit"):
        if quantizing:
            raise AlreadyQuantizedError(f"{repo_or_dir} is already quantized to 4 bits: load it without load_in_4bit / "
                             "load_in_8bit")
        modules, wanted = {}, set(model.state_dict())
        tensors = {key: materialize(t) for key, t in tensors.items()}
        for name, stats in pop_bnb_modules(tensors).items():   # checkpoint names -> ours, as map_checkpoint does
            ours = target_key(model, base_key(f"{name}.weight")).removesuffix(".weight")
            if f"{ours}.weight" in wanted:
                modules[ours] = {ours + k[len(name):]: v for k, v in stats.items()}
            else:   # the decoder, or another head's: check_keys judges them with the other extra keys
                info.unexpected_keys.extend(base_key(k) for k in stats)
        load_bnb_modules(model, modules, saved_quant, str(repo_or_dir))
        model.config.extra["quantization_config"] = dict(saved_quant)
    elif saved_quant:
        what = "8-bit bitsandbytes (LLM.int8)" if saved_quant.get("load_in_8bit") else saved_quant.get("quant_method")
        raise ValueError(f"{repo_or_dir} holds {what} weights, which this library cannot load: load the "
                         "unquantized checkpoint with load_in_8bit=True or load_in_4bit=True")
    mapped = map_checkpoint(model, tensors, info)
    del tensors
    check_keys(model, mapped, info, str(repo_or_dir), ignore_mismatched_sizes)
    assign(model, mapped, dtype, quant)
    return model.eval(), info


@torch.no_grad()
def assign(model: torch.nn.Module, mapped: dict[str, torch.Tensor], dtype: torch.dtype,
           quant: QuantOptions | None = None) -> None:
    """Puts checkpoint tensors into the meta model; heads absent from the checkpoint get a real random init.

    Tensors are read one at a time (LazyTensor) and, with `quant`, a layer to quantize is quantized as soon as
    its weight is in: full precision exists for one tensor at a time, so loading peaks near the quantized
    model's size plus the largest tensor, not the full-precision model's size (tied weights wait for
    QuantOptions.apply, after tying)."""
    streamed: set[str] = set()
    if quant is not None and quant.quant_type in ("int8", "int4"):   # bitsandbytes' modules are nn.Linear too
        tied = tied_keys(model)
        streamed = {n for n in quant.targets(model) if f"{n}.weight" not in tied
                    and not (tied and n.rpartition(".")[2] == "shared")}
    for key in list(mapped):
        module_name, _, name = key.rpartition(".")
        module = model.get_submodule(module_name)
        if name in module._buffers:  # quantized weights: kept exactly as stored
            tensor = materialize(mapped.pop(key))
            if tensor.data_ptr() % 64:  # read in place at an odd file offset: kernels want aligned memory
                tensor = tensor.clone()
            module._buffers[name] = tensor
            continue
        # fp16 overflows in mT5's feed-forward output projection: keep `wo` in fp32 (as transformers does)
        target = torch.float32 if dtype == torch.float16 and key.endswith("DenseReluDense.wo.weight") else dtype
        tensor = materialize(mapped.pop(key), target)  # one tensor at a time, converted as it is read
        value = tensor.to(target) if tensor.is_floating_point() else tensor
        setattr(module, name, torch.nn.Parameter(value, requires_grad=value.is_floating_point()))
        del tensor, value
        if module_name in streamed and name == "weight":
            parent, _, leaf = module_name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, quant.quantize(module, leaf))
            del module
    fresh = [k for k, p in model.named_parameters() if p.is_meta]
    if fresh:
        for key in fresh:
            module_name, _, name = key.rpartition(".")
            module = model.get_submodule(module_name)
            meta = getattr(module, name)
            setattr(module, name, torch.nn.Parameter(torch.empty(meta.shape, dtype=dtype)))
        model.init_weights(only=set(fresh))
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike, max_shard_size: int | None = None,
                    safe_serialization: bool = True) -> None:
    """Writes config.json and the weights (model.safetensors, or shards with an index) that transformers loads."""
    qconfig = model.config.extra.get("quantization_config") or {}
    method = qconfig.get("quant_method")
    if method not in (None, INT4_METHOD, INT8_METHOD, "bitsandbytes"):
        raise ValueError(f"saving {method} models is not supported: save the unquantized model and quantize "
                         "when loading")
    if method == "bitsandbytes" and qconfig.get("quantize_embeddings"):
        raise ValueError("bitsandbytes cannot save 4-bit embeddings (Embedding4bit): save without "
                         "quantize_embeddings, or use bnb_4bit_quant_type='int4', whose 4-bit embeddings save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.replace(architectures=[type(model).__name__])
    config.torch_dtype = str(model.dtype).removeprefix("torch.")
    if hasattr(model, "generate"):
        # As transformers: decoding defaults go to generation_config.json; config.json keeps them as null.
        for key in GENERATION_KEYS:
            if config.extra.get(key, COMMON_DEFAULTS[key]) != COMMON_DEFAULTS[key]:
                config.extra[key] = None
        model.generation_config.save_pretrained(directory)
    config.save_pretrained(directory)
    skip = tied_keys(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in skip}
    if not safe_serialization:
        torch.save(state, directory / BIN_NAME)
        return
    shards = split_shards(state, max_shard_size)
    if len(shards) == 1:
        save_file(shards[0], directory / SAFE_NAME, metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        total += sum(t.numel() * t.element_size() for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def split_shards(state: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    shards, size = [{}], 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_bytes and shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards
