"""4- and 8-bit weights: bitsandbytes NF4/FP4 (transformers' `load_in_4bit`), and our int4 / int8 on PyTorch's
own kernels.

- `bnb_4bit_quant_type="nf4" | "fp4"`: bitsandbytes' modules and kernels, on CUDA and (slowly) on CPU. The
  Linear-only default quantizes what transformers quantizes (every Linear but `lm_head` and the fp32-kept `wo`),
  so outputs match transformers + bitsandbytes. They save and load in transformers' bitsandbytes format
  (`weight` packed, `weight.absmax`, `weight.quant_state.bitsandbytes__nf4`, ...), both ways.
- `bnb_4bit_quant_type="int4"`: group-wise affine int4 (64 weights share a bf16 scale and zero) run by PyTorch's
  `_weight_int4pack_mm_for_cpu` on CPU (~4x faster than fp32 for mT5's output projection); on other devices
  the weights are dequantized per call (correct, not fast: CUDA's int4pack layout was not verified on a GPU yet,
  use nf4 there). One checkpoint format for every device: `qweight` (plain nibbles, low nibble = even column)
  and `scales_and_zeros`; the CPU layout is made at first use. Saves and reloads as is.
- `load_in_8bit=True`: per-row symmetric int8 (a row's absmax / 127 is its scale, as bitsandbytes' LLM.int8
  rounds its weights), run by PyTorch's `_weight_int8pack_mm` with bf16 activations on CPU (~2.5x faster than an
  fp32 matmul for the output projection, though slower than the fp32 head's exact int8 screen that greedy search
  uses); dequantized per call elsewhere. Saves and reloads as is. Its logit error is ~1/12 of int4's: the choice
  where 4 bits lose too much.
- `quantize_embeddings=True` (beyond transformers): the shared embedding and `lm_head` too. They are 85% of
  mt5-small's weights, so "4-bit" mt5-small drops from ~1 GB (Linear-only) to ~0.19 GB (int8: ~0.31 GB).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

INT4_METHOD = "mt5studio-int4"
INT8_METHOD = "mt5studio-int8"
KEEP_FULL = ("wo",)  # kept unquantized and fp32, as transformers does for mT5 (fp16 overflows there)
HEADS = ("classification_head", "classifier", "qa_outputs")


@dataclass
class QuantOptions:
    quant_type: str = "nf4"
    compute_dtype: torch.dtype | None = None
    double_quant: bool = False
    quantize_embeddings: bool = False
    group_size: int = 64
    # int4 only: the feed-forward output projection `wo` in per-row int8 instead of full precision. XXL weights
    # need more than 4 bits there (transformers #20287); 8 bits with bf16/fp32 activations cannot overflow, and
    # halve what a bf16 `wo` holds (2 GB of mt0-xxl's 9.5): what brings the XXL shape under 9 GB.
    int8_wo: bool = False

    @classmethod
    def pop_from(cls, options: dict[str, Any]) -> "QuantOptions | None":
        """Takes the 4- and 8-bit options out of from_pretrained's keyword arguments; None when both are off."""
        load4 = options.pop("load_in_4bit", False)
        load8 = options.pop("load_in_8bit", False)
        picked = {k: options.pop(k) for k in ("bnb_4bit_quant_type", "bnb_4bit_compute_dtype",
                                              "bnb_4bit_use_double_quant", "quantize_embeddings",
                                              "int4_group_size", "int8_wo") if k in options}
        if load4 and load8:
            raise ValueError("load_in_4bit and load_in_8bit exclude each other: pick one")
        if load8:
            four_bit = sorted(set(picked) - {"quantize_embeddings"})
            if four_bit:
                raise ValueError(f"{four_bit} only apply with load_in_4bit=True, not load_in_8bit")
            return cls("int8", quantize_embeddings=bool(picked.get("quantize_embeddings", False)))
        if not load4:
            if picked:
                raise ValueError(f"{sorted(picked)} only apply with load_in_4bit=True (quantize_embeddings: "
                                 "or load_in_8bit=True)")
            return None
        qt = picked.get("bnb_4bit_quant_type", "nf4")
        if qt not in ("nf4", "fp4", "int4"):
            raise ValueError(f"bnb_4bit_quant_type must be 'nf4', 'fp4' or 'int4', got {qt!r}")
        compute = picked.get("bnb_4bit_compute_dtype")
        if isinstance(compute, str):
            compute = getattr(torch, compute.replace("torch.", ""))
        if qt != "int4":
            if picked.get("int8_wo"):
                raise ValueError("int8_wo=True applies to bnb_4bit_quant_type='int4' (this library's kernel) only")
            require_bitsandbytes()
        return cls(qt, compute, bool(picked.get("bnb_4bit_use_double_quant", False)),
                   bool(picked.get("quantize_embeddings", False)), int(picked.get("int4_group_size", 64)),
                   bool(picked.get("int8_wo", False)))

    def targets(self, model: nn.Module) -> list[str]:
        """Names of the nn.Linear / nn.Embedding modules to quantize."""
        out = []
        for name, module in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.Linear):
                if (leaf in KEEP_FULL and not self.int8_wo) or any(name.startswith(h) for h in HEADS):
                    continue
                if leaf == "lm_head" and not self.quantize_embeddings:
                    continue
                out.append(name)
            elif isinstance(module, nn.Embedding) and leaf == "shared" and self.quantize_embeddings:
                out.append(name)
        return out

    def apply(self, model: nn.Module) -> nn.Module:
        """Replaces the target modules by quantized ones, quantizing their weights; records the setting in config."""
        for name in self.targets(model):
            parent, _, leaf = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, leaf, self.quantize(getattr(owner, leaf), leaf))
        model.config.extra["quantization_config"] = self.describe()
        if self.quantize_embeddings:
            # What stays full precision is small now: copy it out of the checkpoint's memory map, so the map
            # (whose pages the quantization read) can be released instead of staying resident.
            with torch.no_grad():
                for module in model.modules():
                    for name, p in list(module._parameters.items()):
                        if type(p) is nn.Parameter:  # not bitsandbytes' Params4bit: it carries its quant_state
                            module._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        return model

    def quantize(self, module: nn.Module, leaf: str = "") -> nn.Module:
        """`module` quantized; `leaf` is its name in its parent (`wo` takes int8 under int8_wo)."""
        if self.quant_type == "int8" or (self.int8_wo and leaf in KEEP_FULL):
            return Int8Embedding.from_float(module) if isinstance(module, nn.Embedding) \
                else Int8Linear.from_float(module)
        if self.quant_type == "int4":
            return Int4Embedding.from_float(module, self.group_size) if isinstance(module, nn.Embedding) \
                else Int4Linear.from_float(module, self.group_size)
        return bnb_module(module, self)

    def describe(self) -> dict[str, Any]:
        if self.quant_type == "int8":
            return {"quant_method": INT8_METHOD, "quantize_embeddings": self.quantize_embeddings}
        if self.quant_type == "int4":
            return {"quant_method": INT4_METHOD, "group_size": self.group_size,
                    "quantize_embeddings": self.quantize_embeddings, **({"int8_wo": True} if self.int8_wo else {})}
        return {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": self.quant_type,
                "bnb_4bit_use_double_quant": self.double_quant, "quantize_embeddings": self.quantize_embeddings,
                "bnb_4bit_compute_dtype": str(self.compute_dtype or torch.float32).removeprefix("torch.")}


def require_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as e:
        raise ImportError("load_in_4bit with nf4/fp4 needs bitsandbytes: `pip install bitsandbytes`, or use "
                          "bnb_4bit_quant_type='int4' (PyTorch's own kernels, no extra package)") from e
    return bitsandbytes


def bnb_module(module: nn.Module, opts: QuantOptions) -> nn.Module:
    """bitsandbytes' Linear4bit / Embedding4bit holding `module`'s weight, quantized on its device."""
    bnb = require_bitsandbytes()
    weight = module.weight.detach()
    if isinstance(module, nn.Embedding):
        new = bnb.nn.Embedding4bit(module.num_embeddings, module.embedding_dim, dtype=weight.dtype,
                                   quant_type=opts.quant_type)
    else:
        new = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                compute_dtype=opts.compute_dtype or weight.dtype,
                                compress_statistics=opts.double_quant, quant_type=opts.quant_type)
        if module.bias is not None:
            new.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
    new.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type=opts.quant_type,
                                   compress_statistics=opts.double_quant, blocksize=64,
                                   module=new).to(weight.device)   # the module keeps its quant_state
    return exact_cpu_path(new)


def exact_cpu_path(module: nn.Module) -> nn.Module:
    """Keeps a bitsandbytes module on its exact CPU path (dequantize, fp32 matmul). On CPUs with AVX512-BF16,
    bitsandbytes repacks an eval-mode Linear4bit at its first call and runs it with bf16 activations: outputs
    then depend on the machine, and saving after that call inverts the packing lossily when statistics are
    double-quantized (the reloaded model differs). transformers does take that path, hence the small gap to
    transformers + bitsandbytes on such CPUs (tests/test_placement.py)."""
    module.support_avx512bf16_for_cpu = False
    return module


BNB_STATS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.")


def pop_bnb_modules(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Takes the bitsandbytes 4-bit weights out of a checkpoint's tensors: {module name: its `weight` and
    `weight.*` statistics}, for every module whose weight has a saved quant_state (transformers' format)."""
    names = {k.split(".weight.quant_state.")[0] for k in tensors if ".weight.quant_state." in k}
    out = {}
    for name in sorted(names):
        prefix = f"{name}.weight"
        out[name] = {k: tensors.pop(k) for k in list(tensors)
                     if k == prefix or (k.startswith(prefix + ".") and k[len(prefix) + 1:].startswith(BNB_STATS))}
    return out


def load_bnb_modules(model: nn.Module, modules: dict[str, dict[str, torch.Tensor]], qconfig: dict[str, Any],
                     source: str) -> None:
    """Puts a saved bitsandbytes 4-bit checkpoint's packed weights into bitsandbytes modules, as they are."""
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ImportError(f"{source} holds bitsandbytes 4-bit weights: loading them needs bitsandbytes "
                          "(`pip install bitsandbytes`)") from e
    compute = qconfig.get("bnb_4bit_compute_dtype")
    compute = getattr(torch, str(compute).replace("torch.", "")) if compute else None
    for name, stats in modules.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{source} has 4-bit weights for {name}, which this model does not have") from None
        if not isinstance(old, (nn.Linear, nn.Embedding)) or getattr(old, "bias", None) is not None:
            raise ValueError(f"{source}: {name} is 4-bit in the checkpoint but is not a bias-free Linear or an "
                             "Embedding here")
        data = stats.pop(f"{name}.weight", None)
        present = {k.rsplit(".weight.", 1)[-1] for k in stats}
        if data is None or not {"absmax", "quant_map"} <= present:
            lacking = ["weight"] * (data is None) + sorted({"absmax", "quant_map"} - present)
            raise ValueError(f"{source} is incomplete: the 4-bit weight of {name} lacks "
                             f"{', '.join(lacking)}. Download it again, or load the unquantized checkpoint")
        with torch.device("meta"):
            if isinstance(old, nn.Embedding):
                new = bnb.nn.Embedding4bit(old.num_embeddings, old.embedding_dim, dtype=torch.float32)
            else:
                new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=False, compute_dtype=compute)
        new.weight = bnb.nn.Params4bit.from_prequantized(data, stats, requires_grad=False, device="cpu",
                                                          module=new)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, exact_cpu_path(new))


# ------------------------------------------------------------------------------------------------------------
# int4 on PyTorch kernels
# ------------------------------------------------------------------------------------------------------------
def quantize_int4(w: torch.Tensor, group_size: int, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> nibbles (N, K/2) uint8, scales_and_zeros (K/group, N, 2) bf16, w ~ (q - 8) * s + z."""
    n, k = w.shape
    packed = torch.empty(n, k // 2, dtype=torch.uint8)
    sz = torch.empty(k // group_size, n, 2, dtype=torch.bfloat16)
    for start in range(0, n, chunk):  # chunked: no full-size fp32 temporaries
        g = w[start:start + chunk].detach().float().reshape(-1, k // group_size, group_size)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-8).to(torch.bfloat16)
        zero = (lo + 8 * scale.float()).to(torch.bfloat16)
        q = torch.round((g - zero.float()[..., None]) / scale.float()[..., None] + 8).clamp(0, 15).to(torch.uint8)
        q = q.reshape(-1, k)
        packed[start:start + chunk] = q[:, 0::2] | (q[:, 1::2] << 4)
        sz[:, start:start + chunk] = torch.stack([scale, zero], -1).transpose(0, 1)
    return packed, sz


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(..., K/2) uint8 nibbles -> (..., K) uint8 values 0..15."""
    return torch.stack([packed & 15, packed >> 4], -1).flatten(-2)


def dequantize_int4(packed: torch.Tensor, sz: torch.Tensor, group_size: int) -> torch.Tensor:
    """Rows (R, K/2) with their scales_and_zeros (K/group, R, 2) -> (R, K) float32."""
    q = unpack_int4(packed).float()
    r, k = q.shape
    s, z = sz[..., 0].float().t(), sz[..., 1].float().t()     # (R, K/group)
    return ((q.view(r, -1, group_size) - 8) * s[..., None] + z[..., None]).view(r, k)


class Int4Linear(nn.Module):
    """y = x W^T with W in int4 groups; PyTorch's int4 kernels on CPU/CUDA, a dequantizing path elsewhere.

    On the CPU the kernel's packed layout has qweight's very shape and dtype and is local to 64-row blocks, so it
    is written over qweight in place (one copy of the weights, not two); `state_dict`, `.weight` and moves to
    other devices see the plain layout again."""

    def __init__(self, in_features: int, out_features: int, group_size: int = 64, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size = pick_group_size(in_features, group_size)
        self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8,
                                                    device=device))
        self.register_buffer("scales_and_zeros", torch.empty(in_features // self.group_size, out_features, 2,
                                                             dtype=torch.bfloat16, device=device))
        self._kernel_weight: tuple | None = None  # (key, device-layout weight), never saved
        self._in_place: tuple | None = None       # qweight's key while it holds the CPU kernel layout

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 64) -> "Int4Linear":
        if linear.bias is not None:
            raise ValueError("Int4Linear has no bias: mT5 layers have none")
        new = cls(linear.in_features, linear.out_features, group_size)
        new.qweight, new.scales_and_zeros = quantize_int4(linear.weight, new.group_size)
        return new.to(linear.weight.device)

    def key(self) -> tuple:
        return self.qweight.data_ptr(), self.qweight._version, self.qweight.device  # in-place loads bump _version

    def plain_qweight(self) -> torch.Tensor:
        """qweight in the saved (plain nibble) layout: itself, or rebuilt from the kernel layout it holds."""
        return cpu_layout_to_plain(self.qweight) if self._in_place == self.key() else self.qweight

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (out, in), for code that reads `.weight` (dtype checks, inspection)."""
        return dequantize_int4(self.plain_qweight(), self.scales_and_zeros, self.group_size)

    def kernel_weight(self) -> torch.Tensor | None:
        """The device's packed layout, built once (chunked: the CPU layout is per 64 rows)."""
        key = self.key()
        if self._in_place == key:
            return self.qweight
        if self._kernel_weight is None or self._kernel_weight[0] != key:
            self._kernel_weight = None
            if to_cpu_layout_in_place(self.qweight, self.group_size, self.in_features):
                self._in_place = self.key()
                return self.qweight
            self._kernel_weight = (key, device_layout(self.qweight, self.group_size, self.in_features))
        return self._kernel_weight[1]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._in_place == self.key():
            destination[prefix + "qweight"] = self.plain_qweight()

    def _apply(self, fn, recurse=True):
        # a move or copy must carry the plain layout: the kernel layout is this CPU's own
        if self._in_place == self.key():
            self.qweight.copy_(self.plain_qweight())
            self._in_place = None
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        packed = self.kernel_weight()
        if packed is None:
            y = F.linear(x2.float(), self.weight)
        else:
            y = torch._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16), packed, self.group_size,
                                                  self.scales_and_zeros)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


class Int4Embedding(nn.Module):
    """Embedding rows in int4 groups, dequantized on lookup (only the looked-up rows)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, group_size: int = 64, dtype=torch.float32,
                 device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self.group_size = pick_group_size(embedding_dim, group_size)
        self.register_buffer("qweight", torch.empty(num_embeddings, embedding_dim // 2, dtype=torch.uint8,
                                                    device=device))
        self.register_buffer("scales_and_zeros", torch.empty(embedding_dim // self.group_size, num_embeddings, 2,
                                                             dtype=torch.bfloat16, device=device))

    @classmethod
    def from_float(cls, emb: nn.Embedding, group_size: int = 64) -> "Int4Embedding":
        new = cls(emb.num_embeddings, emb.embedding_dim, group_size, emb.weight.dtype)
        new.qweight, new.scales_and_zeros = quantize_int4(emb.weight, new.group_size)
        return new.to(emb.weight.device)

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_int4(self.qweight, self.scales_and_zeros, self.group_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = dequantize_int4(self.qweight[flat], self.scales_and_zeros[:, flat], self.group_size)
        return rows.to(self.dtype).view(*ids.shape, self.embedding_dim)


def pick_group_size(k: int, wanted: int) -> int:
    for g in (wanted, 64, 32, 128, 256):
        if k % g == 0 and k >= g:
            return g
    raise ValueError(f"int4 needs an input size divisible by 32, got {k}")


def device_layout(qweight: torch.Tensor, group_size: int, k: int) -> torch.Tensor | None:
    """PyTorch's packed int4 layout for qweight's device, or None where its kernel cannot take this shape."""
    n = qweight.shape[0]
    if group_size not in (32, 64, 128, 256) or n % 64 or k % 64:
        return None
    try:
        if qweight.device.type == "cpu":
            out = None
            for i in range(0, n, 8192):  # written in place: no list of parts next to a concatenated copy
                part = torch._convert_weight_to_int4pack_for_cpu(unpack_int4(qweight[i:i + 8192]).int(), 2)
                if out is None:
                    out = part.new_empty((n, *part.shape[1:]))
                out[i:i + part.shape[0]] = part
            return out
    except (RuntimeError, AttributeError):
        return None
    return None


CPU_BLOCK = 64   # rows per block of the CPU int4 kernel's layout (AVX-512 builds; checked before it is relied on)


def cpu_layout_to_plain(packed: torch.Tensor) -> torch.Tensor:
    """The CPU kernel's int4 layout (N, K/2) back to plain nibbles: in each block of 64 rows, byte (k, j) holds
    value k of row j (low nibble) and of row j + 32 (high nibble)."""
    n, half = packed.shape
    k = half * 2
    blocks = packed.reshape(n // CPU_BLOCK, k, CPU_BLOCK // 2)
    values = torch.cat([blocks & 15, blocks >> 4], -1).transpose(1, 2).reshape(n, k)   # (N, K) 0..15
    return values[:, 0::2] | (values[:, 1::2] << 4)


def to_cpu_layout_in_place(qweight: torch.Tensor, group_size: int, k: int, chunk: int = 8192) -> bool:
    """Writes the CPU kernel's layout over plain `qweight`, block by block, where the layout is the one
    `cpu_layout_to_plain` inverts (checked on the first block); False (nothing written) elsewhere."""
    n = qweight.shape[0]
    if qweight.device.type != "cpu" or group_size not in (32, 64, 128, 256) or n % CPU_BLOCK or k % 64:
        return False
    if qweight.is_inference() and not torch.is_inference_mode_enabled():
        return False   # made under inference_mode: it cannot be written outside it
    try:
        first = torch._convert_weight_to_int4pack_for_cpu(unpack_int4(qweight[:CPU_BLOCK]).int(), 2)
    except (RuntimeError, AttributeError):
        return False
    if first.shape != qweight[:CPU_BLOCK].shape or not torch.equal(cpu_layout_to_plain(first), qweight[:CPU_BLOCK]):
        return False
    for i in range(0, n, chunk):   # blocks are independent: each chunk is read, then overwritten
        qweight[i:i + chunk] = torch._convert_weight_to_int4pack_for_cpu(unpack_int4(qweight[i:i + chunk]).int(), 2)
    return True


# ------------------------------------------------------------------------------------------------------------
# int8 on PyTorch kernels
# ------------------------------------------------------------------------------------------------------------
def quantize_int8(w: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> int8 (N, K) and fp32 scales (N,): w ~ q * scale, scale = absmax(row) / 127."""
    n, k = w.shape
    q = torch.empty(n, k, dtype=torch.int8)
    scales = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, chunk):  # chunked: no full-size fp32 temporaries
        rows = w[start:start + chunk].detach().float()
        absmax = rows.abs().amax(-1).clamp(min=1e-8)
        q[start:start + chunk] = torch.round(rows * (127 / absmax)[:, None]).to(torch.int8)
        scales[start:start + chunk] = absmax / 127
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Rows (R, K) int8 with their scales (R,) -> (R, K) float32."""
    return q.float() * scales[:, None]


class Int8Linear(nn.Module):
    """y = x W^T with W in per-row int8; PyTorch's int8 kernel (bf16 activations) on CPU, dequantized elsewhere."""

    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, device=device))
        self._kernel_scales: tuple | None = None  # (key, bf16 scales), never saved

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8Linear":
        if linear.bias is not None:
            raise ValueError("Int8Linear has no bias: mT5 layers have none")
        new = cls(linear.in_features, linear.out_features)
        new.qweight, new.scales = quantize_int8(linear.weight)
        return new.to(linear.weight.device)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (out, in), for code that reads `.weight` (dtype checks, inspection)."""
        return dequantize_int8(self.qweight, self.scales)

    def kernel_scales(self) -> torch.Tensor:
        key = (self.scales.data_ptr(), self.scales._version, self.scales.device)
        if self._kernel_scales is None or self._kernel_scales[0] != key:
            self._kernel_scales = (key, self.scales.to(torch.bfloat16))
        return self._kernel_scales[1]

    def kernel_weight(self) -> torch.Tensor:
        """qweight, 64-byte aligned: the CPU kernel's vector loads crash on a tensor read in place from a
        safetensors file at an odd offset (loading aligns them; this covers any other source)."""
        if self.qweight.data_ptr() % 64 or not self.qweight.is_contiguous():
            self._buffers["qweight"] = self.qweight.contiguous().clone()
        return self.qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.qweight.device.type == "cpu" and self.in_features % 64 == 0:
            # fp32 activations take a slow scalar path in this kernel; bf16 ones a vectorised one (~10x faster).
            # Other input sizes crash it or give garbage (torch 2.13): those take the dequantizing path.
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), self.kernel_weight(),
                                          self.kernel_scales())
        else:
            y = F.linear(x2.float(), self.weight)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


class Int8Embedding(nn.Module):
    """Embedding rows in per-row int8, dequantized on lookup (only the looked-up rows)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=torch.float32, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self.register_buffer("qweight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(num_embeddings, dtype=torch.float32, device=device))

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> "Int8Embedding":
        new = cls(emb.num_embeddings, emb.embedding_dim, emb.weight.dtype)
        new.qweight, new.scales = quantize_int8(emb.weight)
        return new.to(emb.weight.device)

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_int8(self.qweight, self.scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = dequantize_int8(self.qweight[flat], self.scales[flat])
        return rows.to(self.dtype).view(*ids.shape, self.embedding_dim)


def prepare_quantized_model(model: nn.Module, qconfig: dict[str, Any], dtype: torch.dtype) -> None:
    """Turns a meta model into the layout of a saved int4 or int8 checkpoint, so its buffers load as they are;
    quantized embeddings return `dtype`, the rest of the model's."""
    int8 = qconfig["quant_method"] == INT8_METHOD
    group = 0 if int8 else int(qconfig["group_size"])
    opts = QuantOptions("int8" if int8 else "int4", None, False, bool(qconfig.get("quantize_embeddings")), group,
                        bool(qconfig.get("int8_wo")))
    for name in opts.targets(model):
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        old = getattr(owner, leaf)
        with torch.device("meta"):
            if isinstance(old, nn.Embedding):
                new = Int8Embedding(old.num_embeddings, old.embedding_dim, dtype) if int8 \
                    else Int4Embedding(old.num_embeddings, old.embedding_dim, group, dtype)
            else:
                new = Int8Linear(old.in_features, old.out_features) if int8 or (opts.int8_wo and leaf in KEEP_FULL) \
                    else Int4Linear(old.in_features, old.out_features, group)
        setattr(owner, leaf, new)
