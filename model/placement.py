"""Device placement with accelerate: device maps, CPU/disk offload, the old parallelize() API, and memory use.

A block is never split across devices (`no_split_module_classes=["Block"]`); accelerate's hooks move each
module's inputs to its device, so callers pass inputs on `model.device` and read outputs anywhere.
"""
from __future__ import annotations

import os
import warnings
from collections import defaultdict
from typing import Any

import torch
from accelerate import dispatch_model, infer_auto_device_map
from accelerate.hooks import remove_hook_from_submodules
from accelerate.utils import get_balanced_memory

NO_SPLIT = ["Block"]
PRESETS = ("auto", "balanced", "balanced_low_0", "sequential")


class PlacementError(ValueError):
    """A device map that cannot be honoured."""


def available_devices() -> list[str]:
    """The devices a whole model can be placed on here: cpu, each CUDA GPU, mps where it works."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        out.append("mps")
    return out


def check_model_device(device_map: Any) -> None:
    """Refuses, before anything is loaded, a whole-model device that cannot hold it here (meta, disk, a missing
    GPU, a typo), naming the available ones; presets and explicit maps are checked when placing."""
    if isinstance(device_map, (str, int, torch.device)) and device_map not in PRESETS:
        if str(device_map) in ("meta", "disk"):
            raise PlacementError(f"device {str(device_map)!r} keeps no weight in memory, so the model could not "
                                 f"run: use one of {', '.join(available_devices())} or a preset "
                                 f"({', '.join(PRESETS)})")
        check_device(device_map)


def check_device(device: Any) -> str | int:
    """Normalises a device name and checks that it exists here."""
    if isinstance(device, torch.device):
        device = str(device)
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        device = int(device)
        if device >= torch.cuda.device_count():
            raise PlacementError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} "
                                 "CUDA GPU(s)")
        return device
    if device in ("cpu", "disk", "meta"):
        return device
    if isinstance(device, str) and (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        index = int(device.split(":")[1]) if ":" in device else 0
        if not torch.cuda.is_available():
            raise PlacementError(f"device {device!r} asked for, but no CUDA GPU is available here: use one of "
                                 f"{', '.join(available_devices())}, or device_map='auto'")
        if index >= torch.cuda.device_count():
            raise PlacementError(f"device {device!r} does not exist: available here are "
                                 f"{', '.join(available_devices())}")
        return index
    if device == "mps" and torch.backends.mps.is_available():
        return device
    raise PlacementError(f"unknown device {device!r}: available here are {', '.join(available_devices())} "
                         "(and 'disk' in a device map)")


def check_map(model: torch.nn.Module, device_map: dict[str, Any]) -> dict[str, str | int]:
    """Validates an explicit {module name: device} map: known names, existing devices, every weight covered."""
    names = {name for name, _ in model.named_modules()}
    unknown = [k for k in device_map if k not in names]
    if unknown:
        raise PlacementError(f"device_map names module(s) this model does not have: {', '.join(unknown[:8])}. "
                             "Names are the checkpoint's, e.g. 'shared', 'encoder.block.0', 'lm_head'")
    clean = {k: check_device(v) for k, v in device_map.items()}
    covered = lambda p: any(k == "" or p == k or p.startswith(k + ".") for k in clean)
    missing = sorted({p.rsplit(".", 1)[0] for p, _ in model.named_parameters() if not covered(p)})
    if missing:
        raise PlacementError(f"device_map leaves {len(missing)} module(s) without a device: {', '.join(missing[:8])}")
    return clean


def infer_map(model: torch.nn.Module, preset: str, max_memory: dict | None, dtype: torch.dtype) -> dict:
    """accelerate's automatic map for a preset ('auto' = 'balanced' over GPUs, then CPU, then disk)."""
    if max_memory is not None:
        max_memory = {check_device(k) if k not in ("cpu", "disk") else k: v for k, v in max_memory.items()}
    if preset != "sequential" and torch.cuda.device_count() > 1:
        max_memory = get_balanced_memory(model, max_memory, no_split_module_classes=NO_SPLIT, dtype=dtype,
                                         low_zero=preset == "balanced_low_0")
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=NO_SPLIT, dtype=dtype)


def place(model: torch.nn.Module, device_map: Any, max_memory: dict | None = None,
          offload_folder: str | os.PathLike | None = None) -> torch.nn.Module:
    """Places a loaded (CPU) model: a device name, a preset ('auto', 'balanced', ...) or an explicit map."""
    if isinstance(device_map, (str, int, torch.device)) and device_map not in PRESETS:
        device = check_device(device_map)
        if device == "disk":
            raise PlacementError("device_map='disk' would keep no weight in memory: use 'auto' with max_memory")
        return model.to(f"cuda:{device}" if isinstance(device, int) else device)
    if isinstance(device_map, str):
        device_map = infer_map(model, device_map, max_memory, model.dtype)
    else:
        device_map = check_map(model, dict(device_map))
    devices = set(device_map.values())
    if devices == {"disk"}:
        raise PlacementError(f"max_memory={max_memory} cannot hold even the first module in memory: allow more")
    if "disk" in devices and any(type(m).__module__.startswith("bitsandbytes") for m in model.modules()):
        raise PlacementError("bitsandbytes 4-bit weights cannot be offloaded to disk: use "
                             "bnb_4bit_quant_type='int4' (or load_in_8bit=True), whose weights offload, or allow "
                             "more memory")
    if "disk" in devices and offload_folder is None:
        need = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
        raise PlacementError(f"the model ({need:.0f} MiB) does not fit in max_memory={max_memory}: pass "
                             "offload_folder= to offload the rest to disk, or allow more memory")
    if devices == {"cpu"}:
        model.hf_device_map = device_map
        return model
    main = next((d for d in device_map.values() if d not in ("cpu", "disk")), None)
    # main_device None lets accelerate pick "cpu" (a string: CPU modules then stay in RAM, only disk is offloaded)
    dispatch_model(model, device_map, main_device=None if main is None else torch.device(
        f"cuda:{main}" if isinstance(main, int) else main), offload_dir=offload_folder)
    model.hf_device_map = device_map
    return model


def parallelize_map(model: torch.nn.Module, device_map: dict[int, list[int]] | None) -> dict[str, int]:
    """transformers' old parallelize(): {gpu: [block indices]} for the encoder and, alike, the decoder."""
    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise PlacementError("parallelize() spreads blocks over CUDA GPUs and none is available; use "
                             "from_pretrained(device_map='auto') for CPU/disk offload")
    n_enc, n_dec = len(model.encoder.block), len(model.decoder.block)
    if device_map is None:
        device_map = defaultdict(list)
        for i in range(max(n_enc, n_dec)):
            device_map[i * gpus // max(n_enc, n_dec)].append(i)
        device_map = dict(device_map)
    blocks = sorted(i for ids in device_map.values() for i in ids)
    if blocks != list(range(len(blocks))) or len(blocks) < max(n_enc, n_dec):
        raise PlacementError(f"parallelize device_map must assign every block 0..{max(n_enc, n_dec) - 1} exactly "
                             f"once, got {device_map}")
    first, last = min(device_map), max(device_map)
    out: dict[str, int] = {"shared": check_device(first)}
    for gpu, ids in device_map.items():
        for i in ids:
            for stack, n in (("encoder", n_enc), ("decoder", n_dec)):
                if i < n:
                    out[f"{stack}.block.{i}"] = check_device(gpu)
    out["encoder.final_layer_norm"] = out["decoder.final_layer_norm"] = last
    for head in ("lm_head", "qa_outputs"):
        if hasattr(model, head):
            out[head] = first  # next to the embedding, as transformers does
    return out


def unplace(model: torch.nn.Module) -> torch.nn.Module:
    """Removes accelerate's hooks and brings every weight back to the CPU (deparallelize)."""
    remove_hook_from_submodules(model)
    if hasattr(model, "hf_device_map"):
        del model.hf_device_map
    return model.to("cpu")


def memory_footprint(model: torch.nn.Module) -> dict[str, dict[str, int]]:
    """Bytes of weights by component (embeddings, lm_head, transformer, heads) and device; shared tensors once."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    device_map = getattr(model, "hf_device_map", {})
    seen = set()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        base = name.removeprefix("transformer.")
        part = ("embeddings" if base.startswith("shared.") else "lm_head" if base.startswith("lm_head.")
                else "transformer" if base.startswith(("encoder.", "decoder.")) else "heads")
        device = placed_device(name, tensor, device_map)
        out[part][device] += tensor.numel() * tensor.element_size()
    return {k: dict(v) for k, v in out.items()}


def placed_device(name: str, tensor: torch.Tensor, device_map: dict) -> str:
    if tensor.device.type != "meta" or not device_map:
        return str(tensor.device)
    best = max((k for k in device_map if k == "" or name.startswith(k + ".")), key=len, default="")
    return str(device_map.get(best, "meta"))


def warn_slow_dtype(dtype: torch.dtype, device: Any) -> None:
    if dtype == torch.float16 and str(device).startswith("cpu"):
        warnings.warn("float16 on CPU is slow (no fast fp16 matmul kernels on most CPUs): use float32 or "
                      "bfloat16 on CPU", stacklevel=3)
