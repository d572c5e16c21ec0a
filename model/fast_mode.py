"""Fast decoding (opt-in; tokens may differ from the fp32 model's): int8 decoder layers and head on fbgemm.

A decoding step reads every decoder weight and the output projection once; in fp32 that is what a step costs on
the CPU. Here those weights are int8 with per-row scales (a quarter of the bytes) and each product runs fbgemm's
dynamic int8 kernel (activations quantized per call, 7 bits over the whole input's range): the fastest kernel
PyTorch has for a few rows on the CPU. The encoder (run once per request) keeps its weights. This is not the
exact model: its tokens agree with fp32's at most positions, not all (bench/generate.py prints how often), so the
page and the API label it "fast, tokens may differ".
"""
from __future__ import annotations

import torch
from torch import nn

from .fast_head import fbgemm_pack
from .quant import KEEP_FULL, quantize_int8


class DynamicInt8Linear(nn.Module):
    """y = x W^T by fbgemm's dynamic int8 linear, W in per-row int8 (no bias: mT5 layers have none)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("DynamicInt8Linear has no bias: mT5 layers have none")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scales = quantize_int8(linear.weight.detach().float())
        self.packed = fbgemm_pack(q, scales)
        if self.packed is None:
            raise RuntimeError("fast decoding needs PyTorch's fbgemm engine (x86 CPUs); this build has none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).float().contiguous(), self.packed,
                                               True)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


def fast_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def make_fast(model: nn.Module, head: bool = True) -> nn.Module:
    """Swaps the decoder's linear layers and the lm_head of `model` (CPU, fp32, not dispatched) for
    DynamicInt8Linear, in place; returns the model, marked `fast_decoding`. The feed-forward output projections
    (`wo`) stay fp32, as in every quantization here: mT5's largest activations pass through them."""
    if not fast_available():
        raise RuntimeError("fast decoding needs PyTorch's fbgemm engine (x86 CPUs); this build has none")
    if getattr(model, "hf_device_map", None) or next(model.parameters()).device.type != "cpu":
        raise ValueError("fast decoding runs on the CPU: load the model without a device map")
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and (name.startswith("decoder.") or (head and name == "lm_head"))
               and name.rsplit(".", 1)[-1] not in KEEP_FULL]
    for name, module in targets:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, DynamicInt8Linear(module))
    model.fast_decoding = True
    return model
