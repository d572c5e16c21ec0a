"""mT5 and UMT5 in plain PyTorch, read top to bottom.

One file covers both families: the only modelling difference is that UMT5 owns a relative-position-bias table
in every self-attention layer, while mT5 owns one in block 0 of each stack and reuses its bias in later layers.

Module names are the Hub's (`shared`, `encoder.block.{i}.layer.0.SelfAttention.q`, ...), so a Hub state dict
loads with a plain `load_state_dict` and accelerate device maps use the names transformers users know.

Shapes: B batch, T query length, S key length, D d_model, H heads, K d_kv.

Numerics, stated once:
- No 1/sqrt(K) scaling of attention scores (Mesh-TensorFlow folds it into the initialisation).
- Softmax and RMSNorm run in fp32 and cast back.
- Masks are additive with finfo(dtype).min (never -inf), combined once with the bias: a fully masked row then
  attends uniformly instead of producing NaN, exactly as transformers does.

The public classes (task heads, loading, generation, placement) are built on this in `heads.py`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import MT5Config


# ------------------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """T5's layer norm: no mean, no bias, computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Maps key-minus-query offsets to buckets: half exact small offsets, half log-spaced up to max_distance.

    Encoder buckets are bidirectional (half the buckets per sign); decoder buckets only see the past.
    """
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -relative.clamp(max=0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    # clamp(min=1) only keeps log() finite; those positions take the exact branch anyway.
    log_ratio = torch.log(relative.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


def embedding(rows: int, dim: int) -> nn.Embedding:
    """An embedding without its own random init: post_init() or the checkpoint fills it. (On the meta device
    nn.Embedding's normal_ init alone costs ~0.5 s for mT5's 250k rows.)"""
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


class Attention(nn.Module):
    """Multi-head attention without biases or score scaling; optionally owns a relative-bias table."""

    def __init__(self, cfg: MT5Config, has_relative_bias: bool, bidirectional: bool):
        super().__init__()
        self.num_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        self.q = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.o = nn.Linear(cfg.inner_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout_rate
        self.bidirectional = bidirectional
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        if has_relative_bias:
            self.relative_attention_bias = embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    @property
    def has_relative_bias(self) -> bool:
        return hasattr(self, "relative_attention_bias")

    def position_bias(self, buckets: torch.Tensor) -> torch.Tensor:
        """(1, H, T, S) bias from the (T, S) bucket matrix of `bucket_matrix`."""
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def bucket_matrix(self, query_pos: torch.Tensor, key_len: int) -> torch.Tensor:
        """(T, S) relative-position buckets for queries at `query_pos` (T,) against keys 0..S-1."""
        key_pos = torch.arange(key_len, device=query_pos.device)
        return relative_position_bucket(key_pos[None, :] - query_pos[:, None], self.bidirectional,
                                        self.num_buckets, self.max_distance)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H*K) -> (B, H, T, K)"""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.d_kv).transpose(1, 2)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                need_weights: bool = False, head_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) queries' input; k, v (B, H, S, K) projected keys/values; bias (B|1, H|1, T, S) additive;
        head_mask (1, H, 1, 1) multiplies the attention probabilities (transformers' head masking).

        Returns the output (B, T, D) and, when asked, the attention weights (B, H, T, S), after dropout and the
        head mask, as transformers returns them.
        """
        q = self.split_heads(self.q(x))
        p = self.dropout if self.training else 0.0
        if need_weights or head_mask is not None:  # SDPA cannot scale probabilities per head
            scores = q @ k.transpose(-1, -2)
            if bias is not None:
                scores = scores + bias
            weights = F.softmax(scores.float(), dim=-1).type_as(scores)
            weights = F.dropout(weights, p=p, training=self.training)
            if head_mask is not None:
                weights = weights * head_mask
            out = weights @ v
        else:
            weights = None
            if bias is not None and bias.dtype != q.dtype:
                bias = bias.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=1.0)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.o(out), weights


class FeedForward(nn.Module):
    """`wo(act(wi_0 x) * wi_1 x)` when gated, else `wo(act(wi x))`."""

    def __init__(self, cfg: MT5Config, gated: bool):
        super().__init__()
        if gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.gated = gated
        self.act = activation(cfg.dense_act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        h = self.dropout(h)
        # In fp16 models wo is kept in fp32 (mT5 overflows fp16 there): its input is cast up and its fp32 output
        # makes the residual stream fp32 from here on, as in transformers. Quantized layers cast for themselves
        # (their `.weight` is a dequantized copy: reading it here would cost a full dequantization per call).
        wo = self.wo
        if isinstance(wo, nn.Linear) and wo.weight.dtype.is_floating_point and h.dtype != wo.weight.dtype:
            h = h.to(wo.weight.dtype)
        return wo(h)


def activation(name: str):
    acts = {
        "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
        "gelu": F.gelu,
        "relu": F.relu,
        "silu": F.silu,
        "swish": F.silu,
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    }
    if name not in acts:
        raise ValueError(f"activation {name!r} in feed_forward_proj is not supported: use one of {sorted(acts)}")
    return acts[name]


# Sub-layers, named as on the Hub: block.layer.0 (self-attention), .1 (cross-attention), last (feed-forward).
class SelfAttentionLayer(nn.Module):
    def __init__(self, cfg: MT5Config, has_relative_bias: bool, bidirectional: bool):
        super().__init__()
        self.SelfAttention = Attention(cfg, has_relative_bias, bidirectional)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.dropout = nn.Dropout(cfg.dropout_rate)


class CrossAttentionLayer(nn.Module):
    def __init__(self, cfg: MT5Config):
        super().__init__()
        self.EncDecAttention = Attention(cfg, has_relative_bias=False, bidirectional=True)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.dropout = nn.Dropout(cfg.dropout_rate)


class FeedForwardLayer(nn.Module):
    def __init__(self, cfg: MT5Config, gated: bool):
        super().__init__()
        self.DenseReluDense = FeedForward(cfg, gated)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.dropout(self.DenseReluDense(self.layer_norm(h)))


# ------------------------------------------------------------------------------------------------------------
# KV cache
# ------------------------------------------------------------------------------------------------------------
class KVCache:
    """Decoder cache: self-attention K/V per layer grow in place; cross-attention K/V are computed once.

    Self-attention buffers are preallocated with headroom and doubled when full, so a decoding step writes one
    position instead of concatenating the whole history.
    """

    def __init__(self, num_layers: int):
        self.self_k: list[torch.Tensor | None] = [None] * num_layers
        self.self_v: list[torch.Tensor | None] = [None] * num_layers
        self.cross_k: list[torch.Tensor | None] = [None] * num_layers
        self.cross_v: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers

    def get_seq_length(self) -> int:
        """Number of decoder positions already cached."""
        return self.lengths[0]

    # transformers users index the cache: len() layers, cache[i] = (self k, self v, cross k, cross v), each
    # (B, H, S, K) — views of the filled part, no copies.
    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, layer: int) -> tuple[torch.Tensor | None, ...]:
        n = self.lengths[layer]
        k, v = self.self_k[layer], self.self_v[layer]
        return (None if k is None else k[:, :, :n], None if v is None else v[:, :, :n],
                self.cross_k[layer], self.cross_v[layer])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def to_legacy_cache(self) -> tuple[tuple[torch.Tensor | None, ...], ...]:
        """The old tuple-of-tuples format: one (self k, self v, cross k, cross v) per layer."""
        return tuple(self)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds k, v (B, H, T, K) after the cached positions; returns views of all positions (B, H, S, K)."""
        start, end = self.lengths[layer], self.lengths[layer] + k.shape[2]
        buf_k, buf_v = self.self_k[layer], self.self_v[layer]
        if buf_k is None or buf_k.shape[2] < end:
            capacity = max(end + 32, 2 * (0 if buf_k is None else buf_k.shape[2]))
            new_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            new_v = v.new_empty(new_k.shape)
            if start:
                new_k[:, :, :start] = buf_k[:, :, :start]
                new_v[:, :, :start] = buf_v[:, :, :start]
            buf_k, buf_v = self.self_k[layer], self.self_v[layer] = new_k, new_v
        buf_k[:, :, start:end] = k
        buf_v[:, :, start:end] = v
        self.lengths[layer] = end
        return buf_k[:, :, :end], buf_v[:, :, :end]

    def reorder(self, index: torch.Tensor, cross: bool = True) -> None:
        """Keeps batch rows `index` (beam search); copies only the filled part of the self-attention buffers.

        `cross=False` leaves cross-attention K/V alone: right when `index` only moves rows between copies of the
        same input (beams of one input share identical encoder rows).
        """
        # index_select, not advanced indexing: ~4x faster on CPU for these shapes
        for i, n in enumerate(self.lengths):
            for bufs in (self.self_k, self.self_v):
                if bufs[i] is not None:
                    bufs[i] = bufs[i][:, :, :n + 32].index_select(0, index.to(bufs[i].device))
            for bufs in (self.cross_k, self.cross_v) if cross else ():
                if bufs[i] is not None:
                    bufs[i] = bufs[i].index_select(0, index.to(bufs[i].device))


# ------------------------------------------------------------------------------------------------------------
# Blocks and stacks
# ------------------------------------------------------------------------------------------------------------
class Block(nn.Module):
    """One encoder block (self-attention, feed-forward) or decoder block (+ cross-attention between them)."""

    def __init__(self, cfg: MT5Config, is_decoder: bool, has_relative_bias: bool, gated: bool):
        super().__init__()
        layers = [SelfAttentionLayer(cfg, has_relative_bias, bidirectional=not is_decoder)]
        if is_decoder:
            layers.append(CrossAttentionLayer(cfg))
        layers.append(FeedForwardLayer(cfg, gated))
        self.layer = nn.ModuleList(layers)
        self.is_decoder = is_decoder

    def forward(self, h: torch.Tensor, bias: torch.Tensor | None, ctx: "StackContext", index: int):
        """h (B, T, D) -> (B, T, D), self-attention weights, cross-attention weights (None unless asked)."""
        sa = self.layer[0]
        x = sa.layer_norm(h)
        attn = sa.SelfAttention
        k, v = attn.split_heads(attn.k(x)), attn.split_heads(attn.v(x))
        if ctx.cache is not None:
            k, v = ctx.cache.append(index, k, v)
        head_mask = None if ctx.head_mask is None else ctx.head_mask[index]
        out, self_w = attn(x, k, v, bias, ctx.need_weights, head_mask)
        h = h + sa.dropout(out)
        cross_w = None
        if self.is_decoder:
            h, cross_w = self.cross_attend(h, ctx, index)
        return self.layer[-1](h), self_w, cross_w

    def cross_keys_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values (B, H, S, K) of encoder states (B, S, D)."""
        attn = self.layer[1].EncDecAttention
        return attn.split_heads(attn.k(states)), attn.split_heads(attn.v(states))

    def cross_attend(self, h: torch.Tensor, ctx: "StackContext", index: int):
        ca = self.layer[1]
        attn = ca.EncDecAttention
        cache = ctx.cache
        if cache is not None and cache.cross_k[index] is not None:
            k, v = cache.cross_k[index], cache.cross_v[index]
        else:
            k, v = self.cross_keys_values(ctx.encoder_states.to(h.device))
            if cache is not None:
                cache.cross_k[index], cache.cross_v[index] = k, v
        mask = ctx.encoder_mask
        if mask is not None and mask.device != h.device:  # blocks may sit on different devices (device_map)
            mask = mask.to(h.device)
        head_mask = None if ctx.cross_head_mask is None else ctx.cross_head_mask[index]
        out, weights = attn(ca.layer_norm(h), k, v, mask, ctx.need_weights, head_mask)
        return h + ca.dropout(out), weights


@dataclass
class StackContext:
    """What every block of one stack call shares."""
    cache: KVCache | None = None
    encoder_states: torch.Tensor | None = None  # (B, S, D)
    encoder_mask: torch.Tensor | None = None    # (B, 1, 1, S) additive
    need_weights: bool = False
    head_mask: torch.Tensor | None = None        # (L, 1, H, 1, 1) self-attention probabilities' multipliers
    cross_head_mask: torch.Tensor | None = None  # (L, 1, H, 1, 1) the same for cross-attention


@dataclass
class StackOutput:
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


class Stack(nn.Module):
    """The encoder or the decoder: blocks, then a final norm. Embedding is done by the caller."""

    def __init__(self, cfg: MT5Config, is_decoder: bool, gated: bool):
        super().__init__()
        n = cfg.num_decoder_layers if is_decoder else cfg.num_layers
        self.block = nn.ModuleList(
            Block(cfg, is_decoder, has_relative_bias=(i == 0 or cfg.per_layer_bias), gated=gated) for i in range(n)
        )
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.is_decoder = is_decoder

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor,
                ctx: StackContext, need_hidden: bool = False) -> StackOutput:
        """embeds (B, T, D); mask (B, 1, T, S) additive or None; positions (T,) of the queries."""
        h = self.dropout(embeds)
        key_len = positions[-1].item() + 1 if self.is_decoder else embeds.shape[1]
        hidden, self_ws, cross_ws = [], [], []
        bias = buckets = None
        for i, block in enumerate(self.block):
            attn = block.layer[0].SelfAttention
            if attn.has_relative_bias:  # mT5: block 0 only, reused below; UMT5: every block, same buckets.
                if buckets is None:
                    buckets = attn.bucket_matrix(positions, key_len)
                table_device = attn.relative_attention_bias.weight.device  # never quantized: a cheap read
                bias = attn.position_bias(buckets if table_device.type == "meta" else buckets.to(table_device))
                bias = bias if mask is None else bias + mask.to(bias.device)
            if need_hidden:
                hidden.append(h)
            h, self_w, cross_w = block(h, bias, ctx, i)
            self_ws.append(self_w)
            cross_ws.append(cross_w)
        h = self.dropout(self.final_layer_norm(h))
        if need_hidden:
            hidden.append(h)
        return StackOutput(
            last_hidden_state=h,
            hidden_states=tuple(hidden) if need_hidden else None,
            attentions=tuple(self_ws) if ctx.need_weights else None,
            cross_attentions=tuple(cross_ws) if ctx.need_weights and self.is_decoder else None,
        )


# ------------------------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------------------------
def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, S) of 1/0 -> additive (B, 1, 1, S): 0 where attended, finfo.min where masked."""
    if attention_mask is None:
        return None
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def causal_mask(positions: torch.Tensor, key_len: int, attention_mask: torch.Tensor | None, batch: int,
                dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, T, S) mask: a query at position p sees keys <= p that the 2-D mask keeps."""
    keys = torch.arange(key_len, device=positions.device)
    allowed = (keys[None, :] <= positions[:, None])[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :key_len].bool()
    allowed = allowed.expand(batch, 1, -1, -1)
    zero = torch.zeros((), dtype=dtype, device=positions.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def shift_right(ids: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs from targets: prepend the start token, drop the last, replace -100 by pad."""
    out = ids.new_full(ids.shape, start_id)
    out[..., 1:] = ids[..., :-1]
    return out.masked_fill(out == -100, pad_id)


# ------------------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ModelOutput:
    """What a forward pass returns; fields a model does not produce stay None. Also readable as `out["logits"]`."""
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    past_key_values: KVCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None

    # Read like transformers' ModelOutput (an ordered dict of the fields that are set): by name, by position or
    # slice of to_tuple(); iteration, len(), `in` and keys() see the set fields only.
    def __getitem__(self, key: str | int | slice):
        if not isinstance(key, str):
            return self.to_tuple()[key]
        if getattr(self, key, None) is None:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None)
        return default if value is None else value

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and getattr(self, key, None) is not None

    def to_tuple(self) -> tuple:
        """The fields that are set, in transformers' order (what its models return with return_dict=False).

        The field order above is that order for every output here: each class sets one of (logits,
        start/end logits, last_hidden_state) first, then the cache, then hidden states and attentions."""
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)


# ------------------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------------------
class PreTrainedModel(nn.Module):
    """Config handling, weight init, input checks; loading, saving and placement are added in `heads.py`."""

    config_class = MT5Config
    base_model_prefix = ""  # "transformer" for heads that wrap a whole model, as on the Hub

    def __init__(self, config: MT5Config):
        super().__init__()
        if not isinstance(config, MT5Config) or config.model_type != self.config_class.model_type:
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                            f"{type(config).__name__}: use the matching MT5*/UMT5*/T5* class or model.load_model()")
        self.config = config

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the shared embedding (the first module a device map runs)."""
        device_map = getattr(self, "hf_device_map", None)
        if device_map:
            prefix = f"{self.base_model_prefix}." if self.base_model_prefix else ""
            first = device_map.get(prefix + "shared", next(iter(device_map.values())))
            return torch.device("cpu" if first == "disk" else (f"cuda:{first}" if isinstance(first, int) else first))
        return self.shared_device()

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    def num_parameters(self) -> int:
        """Parameter count, each shared tensor counted once (as transformers does)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    @torch.no_grad()
    def init_weights(self, only: set[str] | None = None, generator: torch.Generator | None = None) -> None:
        """Random init as Mesh TensorFlow / transformers: normal, std from the layer's fan-in; norms to 1.

        `only` restricts it to those parameter names (a head that a checkpoint lacks).
        """
        for name, p in self.named_parameters():
            if only is None or name in only:
                init_parameter(self.config, name, p, generator)

    def post_init(self) -> None:
        """Called at the end of a top-level __init__: random init, except on the meta device (loading)."""
        if self.shared_device().type != "meta":
            self.init_weights()
        if hasattr(self, "tie_weights"):
            self.tie_weights()

    def shared_device(self) -> torch.device:
        """Device of the shared embedding (its packed buffer when quantized: `.weight` would dequantize)."""
        base = getattr(self, self.base_model_prefix) if self.base_model_prefix else self
        shared = base.shared
        return (shared.qweight if hasattr(shared, "qweight") else shared.weight).device

    def check_ids(self, ids: torch.Tensor | None, name: str, mask: torch.Tensor | None = None) -> None:
        """Validates token ids at the boundary: integer dtype, 2-D, in range, mask of the same shape."""
        if ids is None:
            return
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32, torch.int16):
            raise TypeError(f"{name} must be an integer tensor of token ids, got "
                            f"{getattr(ids, 'dtype', type(ids).__name__)}")
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, length), got {tuple(ids.shape)}")
        lo, hi = (int(ids.min()), int(ids.max())) if ids.numel() else (0, 0)
        if hi >= self.config.vocab_size or lo < 0:
            bad = hi if hi >= self.config.vocab_size else lo
            raise ValueError(f"{name} contains id {bad}, outside [0, vocab_size={self.config.vocab_size}): "
                             "was it tokenized with another model's tokenizer?")
        if mask is not None and tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"the attention mask for {name} has shape {tuple(mask.shape)} but {name} has "
                             f"{tuple(ids.shape)}: they must match")


def init_parameter(cfg: MT5Config, name: str, p: torch.Tensor, generator: torch.Generator | None) -> None:
    """One parameter's init by its role (the second-to-last part of its name)."""
    parts = name.split(".")
    role = parts[-2] if len(parts) > 1 else parts[0]
    if "layer_norm" in role:
        p.fill_(cfg.initializer_factor)
        return
    if parts[-1] == "bias" and role != "relative_attention_bias":
        p.zero_()
        return
    fan_in = {"q": cfg.d_model * cfg.d_kv, "o": cfg.inner_dim, "wo": cfg.d_ff, "shared": 1, "lm_head": 1,
              "classifier": 1}.get(role, cfg.d_model)
    p.normal_(0.0, cfg.initializer_factor * fan_in ** -0.5, generator=generator)


class EncoderDecoderBase(PreTrainedModel):
    """`shared` embedding, encoder and decoder: what MT5Model, ...ForConditionalGeneration and ...ForQA share.

    Subclasses call `post_init()` at the end of their own __init__, once their heads exist."""

    def __init__(self, config: MT5Config):
        super().__init__(config)
        gated = config.is_gated_act
        self.shared = embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, is_decoder=False, gated=gated)
        self.decoder = Stack(config, is_decoder=True, gated=gated)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               output_attentions: bool = False, output_hidden_states: bool = False) -> StackOutput:
        """Runs the encoder once: input_ids (B, S) -> last_hidden_state (B, S, D)."""
        self.check_ids(input_ids, "input_ids", attention_mask)
        return self.encode_embeds(self.shared(input_ids), attention_mask, output_attentions, output_hidden_states)

    def encode_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      output_attentions: bool = False, output_hidden_states: bool = False,
                      head_mask: torch.Tensor | None = None) -> StackOutput:
        """The encoder on embeddings (B, S, D); head_mask (L, 1, H, 1, 1) or None."""
        positions = torch.arange(embeds.shape[1], device=embeds.device)
        ctx = StackContext(need_weights=output_attentions, head_mask=head_mask)
        return self.encoder(embeds, padding_mask(attention_mask, embeds.dtype), positions, ctx,
                            output_hidden_states)

    def decode(self, decoder_input_ids: torch.Tensor, encoder_states: torch.Tensor,
               attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
               cache: KVCache | None = None, output_attentions: bool = False,
               output_hidden_states: bool = False) -> StackOutput:
        """Runs the decoder on new tokens (B, T) after the cached ones; returns states (B, T, D).

        `attention_mask` is the encoder's (B, S) padding mask; `decoder_attention_mask` covers cached + new
        positions (B, past + T), or is a 4-D additive mask (B, 1|H, T, past + T) used as given (transformers'
        custom masks: it replaces the causal mask).
        """
        self.check_ids(decoder_input_ids, "decoder_input_ids")
        return self.decode_embeds(self.shared(decoder_input_ids), encoder_states, attention_mask,
                                  decoder_attention_mask, cache, output_attentions, output_hidden_states)

    def decode_embeds(self, embeds: torch.Tensor, encoder_states: torch.Tensor,
                      attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                      cache: KVCache | None = None, output_attentions: bool = False,
                      output_hidden_states: bool = False, head_mask: torch.Tensor | None = None,
                      cross_head_mask: torch.Tensor | None = None) -> StackOutput:
        """`decode` on embeddings (B, T, D); head masks (L, 1, H, 1, 1) or None."""
        past = cache.get_seq_length() if cache is not None else 0
        batch, new = embeds.shape[:2]
        dec_mask = decoder_attention_mask
        if dec_mask is not None and dec_mask.shape[-1] not in (new, past + new):
            raise ValueError(f"decoder_attention_mask covers {dec_mask.shape[-1]} positions; expected "
                             f"{past + new} (cached {past} + new {new})")
        if dec_mask is not None and dec_mask.dim() == 2 and dec_mask.shape[-1] == new and past:
            dec_mask = F.pad(dec_mask, (past, 0), value=1)
        positions = torch.arange(past, past + new, device=embeds.device)
        mask = None
        if dec_mask is not None and dec_mask.dim() == 4:
            mask = dec_mask.to(embeds.dtype)
        elif new > 1 or dec_mask is not None:
            mask = causal_mask(positions, past + new, dec_mask, batch, embeds.dtype)
        ctx = StackContext(cache=cache, encoder_states=encoder_states,
                           encoder_mask=padding_mask(attention_mask, embeds.dtype), need_weights=output_attentions,
                           head_mask=head_mask, cross_head_mask=cross_head_mask)
        return self.decoder(embeds, mask, positions, ctx, output_hidden_states)

    def decode_step(self, tokens: torch.Tensor, encoder_states: torch.Tensor, encoder_mask: torch.Tensor | None,
                    cache: KVCache) -> torch.Tensor:
        """Generation's fast path: tokens (B, T) after the cached positions -> states (B, T, D).

        Inputs are trusted (generation made them); `encoder_mask` is already additive.
        """
        past = cache.get_seq_length()
        new = tokens.shape[1]
        positions = torch.arange(past, past + new, device=tokens.device)
        mask = causal_mask(positions, past + new, None, tokens.shape[0], encoder_states.dtype) if new > 1 else None
        ctx = StackContext(cache=cache, encoder_states=encoder_states, encoder_mask=encoder_mask)
        return self.decoder(self.shared(tokens), mask, positions, ctx).last_hidden_state

    def run(self, *, decoder_input_ids, input_ids=None, attention_mask=None, decoder_attention_mask=None,
            encoder_outputs=None, past_key_values=None, use_cache=None, output_attentions=False,
            output_hidden_states=False, inputs_embeds=None, decoder_inputs_embeds=None, head_mask=None,
            decoder_head_mask=None, cross_attn_head_mask=None):
        """Encoder (unless given) then decoder; returns (encoder StackOutput, decoder StackOutput, cache).

        Embeddings stand in for ids when given; head masks come prepared, (L, 1, H, 1, 1) (see heads.py)."""
        enc = as_stack_output(encoder_outputs)
        if enc is None:
            if inputs_embeds is not None:
                enc = self.encode_embeds(inputs_embeds, attention_mask, output_attentions, output_hidden_states,
                                         head_mask)
            elif input_ids is None:
                raise ValueError("pass input_ids (or encoder_outputs from a previous call)")
            elif head_mask is not None:
                self.check_ids(input_ids, "input_ids", attention_mask)
                enc = self.encode_embeds(self.shared(input_ids), attention_mask, output_attentions,
                                         output_hidden_states, head_mask)
            else:
                enc = self.encode(input_ids, attention_mask, output_attentions, output_hidden_states)
        use_cache = self.config.use_cache and not self.training if use_cache is None else use_cache
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache(len(self.decoder.block))
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError("past_key_values must be the KVCache a previous call of this model returned")
        if decoder_inputs_embeds is None and decoder_head_mask is None and cross_attn_head_mask is None:
            dec = self.decode(decoder_input_ids, enc.last_hidden_state, attention_mask, decoder_attention_mask,
                              cache, output_attentions, output_hidden_states)
        else:
            if decoder_inputs_embeds is None:
                self.check_ids(decoder_input_ids, "decoder_input_ids")
                decoder_inputs_embeds = self.shared(decoder_input_ids)
            dec = self.decode_embeds(decoder_inputs_embeds, enc.last_hidden_state, attention_mask,
                                     decoder_attention_mask, cache, output_attentions, output_hidden_states,
                                     decoder_head_mask, cross_attn_head_mask)
        return enc, dec, cache


def as_stack_output(encoder_outputs) -> StackOutput | None:
    """Accepts our outputs, a transformers-style tuple (last_hidden_state first), or a tensor."""
    if encoder_outputs is None or isinstance(encoder_outputs, StackOutput):
        return encoder_outputs
    if isinstance(encoder_outputs, ModelOutput):
        return StackOutput(encoder_outputs.last_hidden_state, encoder_outputs.hidden_states,
                           encoder_outputs.attentions)
    if isinstance(encoder_outputs, torch.Tensor):
        return StackOutput(encoder_outputs)
    if isinstance(encoder_outputs, (tuple, list)) and encoder_outputs:
        return StackOutput(*encoder_outputs[:3])
    raise TypeError("encoder_outputs must be the output of model.encoder/encode(), a tuple or a tensor")
