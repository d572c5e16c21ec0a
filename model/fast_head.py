"""The output projection as decoding uses it on the CPU: exact results, faster kernels.

mt5-small's lm_head (250112 x 512) is 85% of the weights read per decoding step, and fp32 `F.linear` reaches only
~12 GB/s on it. Two tricks, both exact:
- greedy: `Int8Screen` finds the fp32 argmax at int8 cost (approximate logits, a proof, fp32 rescoring);
- beam search (needs every log-probability): MKL's packed GEMM for the batch x beams row count, ~1.4-1.7x
  faster than F.linear, used only where a probe shows it gives F.linear's very bits (not on every CPU).

Both apply only to an untied, plain `nn.Linear` fp32 head on the CPU that no device map dispatches. Decoding asks
one object, `FastHead.for_model(model)`, for logits or the argmax; the built copies are cached per model, weakly
(they go with the model), and rebuilt when the head's weight changes (its data_ptr or in-place version).
"""
from __future__ import annotations

import threading
import warnings
import weakref
from typing import Callable

import torch

from .quant import Int8Linear

BUILD_LOCK = threading.Lock()  # concurrent requests (the app) build a model's copies once
NEG_INF = float("-inf")

# model -> (weight key, Int8Screen | None); model -> (weight key + rows, MKL packed weight | None).
# None records "looked up, does not apply here" (kernel missing), so the lookup is not repeated.
SCREENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
MKL_PACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# process(scores (n, V), rows) applies the logits processors for batch rows `rows` (every row when None).
Process = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class FastHead:
    """Next-token logits and greedy argmax for one decoding run of `model`, by the fastest exact kernel here."""

    def __init__(self, model, screen: "Int8Screen | None | bool" = None, packed: torch.Tensor | None = None,
                 packed_rows: int = 0):
        self.model = model
        self.screen = screen          # None: not looked up yet (built at the first argmax); False: none applies
        self.packed, self.packed_rows = packed, packed_rows
        self.fallbacks = 0            # rows the screen could not decide, rescored in full (observable for tests)

    @classmethod
    def for_model(cls, model, rows: int | None = None, same_bits: bool = True) -> "FastHead":
        """The head of `model`; `rows` (beam search: batch x beams) builds the MKL-packed head for that count.
        `same_bits=False` (scores compared within a tolerance, as rank classification's) takes the pack even
        where its last bits differ from F.linear's."""
        packed = packed_lm_head(model, rows, same_bits) if rows else None
        return cls(model, packed=packed, packed_rows=rows or 0)

    def logits_in_blocks(self, states: torch.Tensor) -> torch.Tensor:
        """states (N, D) -> logits (N, V), `packed_rows` rows at a time through the pack, or in one plain product
        where there is no pack. A last, shorter block goes through the pack with its own row count where a probe
        shows MKL computes that right (its cost follows the rows: 20 rows ~40 ms against ~60 ms for 32 on
        mt5-small's head), else padded with zero rows. Values agree with F.linear's to rounding, not bit for
        bit: for callers that compare within a tolerance."""
        if self.packed is None:
            return self.logits(states)
        out = []
        weight = self.model.lm_head.weight
        for i in range(0, len(states), self.packed_rows):
            block = states[i:i + self.packed_rows]
            short = self.packed_rows - len(block)
            if short and pack_takes_fewer_rows(self.packed_rows, len(block), weight.shape[1]):
                out.append(torch.ops.mkl._mkl_linear(block, self.packed, weight, None, len(block)))
                continue
            if short:
                block = torch.cat([block, block.new_zeros(short, block.shape[1])])
            out.append(self.logits(block)[:self.packed_rows - short])
        return torch.cat(out) if len(out) > 1 else out[0]

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """states (N, D) -> exact next-token logits (N, V) in fp32."""
        if self.packed is not None and states.shape[0] == self.packed_rows:
            return torch.ops.mkl._mkl_linear(states, self.packed, self.model.lm_head.weight, None,
                                             self.packed_rows)
        return self.model.logits(states[:, None, :])[:, 0, :].float()

    def argmax(self, states: torch.Tensor, process: Process) -> torch.Tensor:
        """states (N, D) -> tokens (N,): the exact argmax of the processed fp32 logits.

        `process` must be monotone-safe for the screen's bound (bans to -inf are; repetition penalty is not:
        the caller takes `logits` for that)."""
        if self.screen is None:
            self.screen = lm_head_screen(self.model) or False
        if not self.screen:
            return process(self.logits(states), None).argmax(-1)
        # the screen exists only for untied heads, so the states need no d_model**-0.5 scaling
        picked, undecided = self.screen.argmax(states.float(), lambda approx: process(approx, None))
        if undecided.any():
            rows = undecided.nonzero().squeeze(1)
            self.fallbacks += len(rows)
            picked[rows] = process(self.logits(states[rows]), rows).argmax(-1)
        return picked


def log_normalizer(logits: torch.Tensor, chunk: int = 32768) -> torch.Tensor:
    """logsumexp over the last dim, (N, V) -> (N, 1), by hand and in vocabulary chunks.

    torch.logsumexp (and exp of very negative values) hits denormals, 10-30x slower on CPU; terms below e^-80
    cannot change an fp32 sum that contains 1, so they are clamped. Chunks keep the temporaries in the L2 cache
    (one (N, V) temporary per step costs ~4x more on 2 cores than the arithmetic)."""
    top, log_sum = log_normalizer_parts(logits, chunk)
    return top + log_sum


def log_normalizer_parts(logits: torch.Tensor, chunk: int = 32768) -> tuple[torch.Tensor, torch.Tensor]:
    """log_normalizer as (max (N, 1), log of the sum of exp(logits - max) (N, 1)): log-probabilities computed as
    (logit - max) - log_sum round as transformers' log_softmax does, to the log-probability's own size."""
    top = logits.amax(-1, keepdim=True)
    total = torch.zeros_like(top)
    buf = logits.new_empty(logits.shape[0], min(chunk, logits.shape[1]))
    for start in range(0, logits.shape[1], chunk):
        part = logits[:, start:start + chunk]
        shifted = torch.sub(part, top, out=buf[:, :part.shape[1]])
        total += shifted.clamp_(min=-80.0).exp_().sum(-1, keepdim=True)
    return top, total.log()


def plain_cpu_head(model) -> torch.nn.Linear | None:
    """The lm_head when the fast paths apply to it: untied plain nn.Linear, fp32, CPU, not dispatched."""
    head = model.lm_head
    if type(head) is not torch.nn.Linear or getattr(model, "hf_device_map", None):
        return None  # a quantized head is its own fast path; a dispatched one may sit apart from the states
    weight = head.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or model.config.tie_word_embeddings:
        return None
    return head


def weight_key(weight: torch.Tensor) -> tuple[int, int]:
    """Changes when the weight is replaced or modified in place: the cached copies are then stale."""
    return weight.data_ptr(), weight._version


# ------------------------------------------------------------------------------------------------------------
# Greedy: the int8 screen
# ------------------------------------------------------------------------------------------------------------
class Int8Screen:
    """Exact greedy argmax at int8 cost, for CPU decoding where the 250k-row output projection dominates.

    int8 weights (per-row scales) give approximate logits several times faster than fp32. A worst-case bound on
    the int8 error says which tokens could still be the fp32 argmax (those within two bounds of the best
    approximate score); they are rescored in fp32 and the best wins. Rows with more than `candidates` of them are
    rescored in full. The result is the fp32 argmax, always.
    Kernel: fbgemm's dynamic int8 linear (activations quantized per call, ~3 ms for mt5-small's head on 2 cores),
    else `aten._weight_int8pack_mm` with bf16 activations (~6-10 ms).
    """

    def __init__(self, weight: torch.Tensor, candidates: int = 8192, chunk: int = 65536):
        rows = weight.shape[0]
        self.err = self.l1 = self.l2 = 0.0
        # fbgemm's packs are built per 64k rows, so no full-size int8 copy exists next to them, even while
        # building; int8pack (where fbgemm is missing) reads one full-size int8 matrix.
        fbgemm = fbgemm_pack(torch.zeros(1, weight.shape[1], dtype=torch.int8), torch.ones(1)) is not None
        self.packed: list | None = [] if fbgemm else None
        q = None if fbgemm else torch.empty(weight.shape, dtype=torch.int8)
        scale = None if fbgemm else torch.empty(rows, dtype=torch.float32)
        for start in range(0, rows, chunk):
            qc, sc = self.quantize_rows(weight[start:start + chunk])
            if fbgemm:
                self.packed.append(fbgemm_pack(qc, sc))
            else:
                q[start:start + chunk], scale[start:start + chunk] = qc, sc
        self.weight, self.candidates = weight, candidates
        self.q, self.scale = (None, None) if fbgemm else (q, scale.to(torch.bfloat16))

    def quantize_rows(self, rows: torch.Tensor, piece: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """int8 rows and their bf16-representable scales (int8pack needs bf16); updates the error bounds.
        fp32 temporaries only `piece` rows at a time (8 MB for d_model 512)."""
        q = torch.empty(rows.shape, dtype=torch.int8)
        scale = torch.empty(rows.shape[0], dtype=torch.float32)
        for start in range(0, rows.shape[0], piece):
            w = rows[start:start + piece].detach().float()
            sc = (w.abs().amax(1).clamp(min=1e-30) / 127).to(torch.bfloat16).float()
            qc = torch.round(w / sc[:, None]).clamp(-128, 127)
            deq = qc * sc[:, None]
            self.err = max(self.err, (w - deq).norm(dim=1).max().item())  # weight error, L2 per row
            self.l1 = max(self.l1, deq.abs().sum(1).max().item())
            self.l2 = max(self.l2, deq.norm(dim=1).max().item())
            q[start:start + piece], scale[start:start + piece] = qc, sc
        return q, scale

    def approximate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate logits (N, V) fp32 and the bound (N,) on their activation-side error."""
        if self.packed is not None:
            approx = torch.cat([torch.ops.quantized.linear_dynamic(h, packed, True) for packed in self.packed], -1)
            return approx, activation_range(h) / 127 / 2 * self.l1
        hb = h.to(torch.bfloat16)
        approx = torch._weight_int8pack_mm(hb, self.q, self.scale).float()
        # bf16 activations, and a bf16 result: its rounding (2^-8 relative) is added by the caller's margin
        return approx, self.l2 * (h - hb.float()).norm(dim=-1) + approx.abs().amax(-1) * 2 ** -7

    def bound(self, h: torch.Tensor, act_bound: torch.Tensor) -> torch.Tensor:
        """(N,): |approximate - exact logit| <= bound for every token of row i. The weight error (L2 per row,
        Cauchy-Schwarz against |h|), the activation error from `approximate`, and fp32 accumulation over D terms."""
        h_norm = h.norm(dim=-1)
        return self.err * h_norm + act_bound + h.shape[-1] * 2 ** -22 * self.l2 * h_norm

    def rescore_columns(self, h: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Exact logits (N, len(columns)) of any head rows `columns`. Padded to a multiple of 64 rows, the
        product gives F.linear's bits over the whole head (MKL splits a row count that is not between its
        threads with a tail kernel that rounds differently)."""
        if not len(columns):
            return h.new_empty(h.shape[0], 0)
        padded = torch.cat([columns, columns[:1].expand(-len(columns) % 64)])
        return self.rescore(h, padded)[:, :len(columns)]

    def rescore(self, h: torch.Tensor, rows: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """Exact logits (N, len(rows)) of the head's `rows` (a multiple of 64 of them).

        The rows are copied `chunk` at a time into one reused buffer and multiplied there: a fresh copy of tens
        of thousands of rows (beam search on mt5-base rescores ~30k) costs ~3x more in page faults than the
        copy itself. Every chunk is a multiple of 64 rows, so the bits stay F.linear's."""
        if len(rows) <= chunk:   # index_select copies whole rows (~3x faster than advanced indexing)
            return torch.nn.functional.linear(h, self.weight.index_select(0, rows))
        weight = self.weight.detach()
        out = h.new_empty(h.shape[0], len(rows))
        buf = weight.new_empty(chunk, weight.shape[1])
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            w = torch.index_select(weight, 0, part, out=buf[:len(part)])
            out[:, start:start + len(part)] = torch.nn.functional.linear(h, w)
        return out

    def argmax(self, h: torch.Tensor, process) -> tuple[torch.Tensor, torch.Tensor]:
        """h (N, D) fp32 states -> (tokens (N,), undecided (N,) bool). `process` applies bans to scores.

        Every token whose exact logit could reach the best lies within two error bounds of the best approximate
        score: those are the candidates, rescored in fp32 (all rows' together, as F.linear computes them). The
        winner is the fp32 argmax by construction, so a row is undecided only when it has more than `candidates` of them
        (then the caller rescores it in full)."""
        approx, act_bound = self.approximate(h)
        scores = process(approx)
        bound = self.bound(h, act_bound)
        block_max = None if scores.shape[-1] % 64 else scores.view(len(h), -1, 64).amax(-1)
        top = scores.amax(-1) if block_max is None else block_max.amax(-1)
        # a non-candidate j has exact_j <= approx_j + bound < top - bound <= exact(approximate argmax) <= best
        threshold = top - 2.02 * bound - 2e-5
        rows, cols = at_least(scores, threshold, block_max)
        undecided = (torch.bincount(rows, minlength=h.shape[0]) > self.candidates) | (top == NEG_INF)
        if bool(undecided.any()):
            keep = ~undecided[rows]
            rows, cols = rows[keep], cols[keep]
        union, where = torch.unique(cols, sorted=True, return_inverse=True)
        exact = self.rescore_columns(h, union)
        best = torch.full((h.shape[0], len(union)), NEG_INF)
        best[rows, where] = exact[rows, where]
        # ties go to the lowest id (union ascends), as argmax over all logits picks
        picked = union[best.argmax(-1)] if len(union) else torch.zeros(h.shape[0], dtype=torch.long)
        return picked, undecided


class QuantizedHeadScreen(Int8Screen):
    """The same search for an int8 model's own head (`quant.Int8Linear`): its logits are those of PyTorch's
    int8 kernel (bf16 activations, a bf16 result), ~12 ms for mt5-small's head on 2 cores; fbgemm reads the same
    int8 weights in ~7 ms with 7-bit activations. The bound covers the two activation roundings, the fp32 sums
    and the bf16 result; candidates are rescored by the int8 kernel itself, on their rows (which gives its
    bits), so the tokens are those the int8 model's full head picks, ties included."""

    def __init__(self, head, candidates: int = 8192, chunk: int = 65536):
        q, scale = head.kernel_weight(), head.kernel_scales()
        self.head, self.candidates, self.err = head, candidates, 0.0   # the weights are the head's own
        self.l1 = self.l2 = 0.0
        self.packed = []
        for start in range(0, q.shape[0], chunk):
            qc, sc = q[start:start + chunk], scale[start:start + chunk].float()
            for piece in range(0, len(qc), 4096):
                w = qc[piece:piece + 4096].float() * sc[piece:piece + 4096, None]
                self.l1 = max(self.l1, w.abs().sum(1).max().item())
                self.l2 = max(self.l2, w.norm(dim=1).max().item())
            packed = fbgemm_pack(qc, sc)
            if packed is None:
                raise RuntimeError("fbgemm is missing")
            self.packed.append(packed)
        self.q = self.scale = None

    def approximate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hb = h.to(torch.bfloat16).float()   # what the int8 kernel multiplies
        approx = torch.cat([torch.ops.quantized.linear_dynamic(hb, packed, True) for packed in self.packed], -1)
        base = activation_range(hb) / 127 / 2 * self.l1 + h.shape[-1] * 2 ** -22 * self.l2 * hb.norm(dim=-1)
        # the kernel rounds its result to bf16: half a unit in the 8th bit, relative
        return approx, base + (approx.abs().amax(-1) + base) * 2 ** -8

    def rescore(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        q, scale = self.head.kernel_weight(), self.head.kernel_scales()
        return torch._weight_int8pack_mm(h.to(torch.bfloat16).contiguous(), q.index_select(0, rows),
                                         scale.index_select(0, rows)).to(h.dtype)


def activation_range(h: torch.Tensor) -> torch.Tensor:
    """(N,): the range fbgemm's dynamic linear quantizes the input h (N, D) over, to 7 bits, so each element is off
    by at most range / 127 / 2. It is the whole tensor's [min(h, 0), max(h, 0)], one range for all rows, not each
    row's own: in a batch, a row of small states is quantized as coarsely as the largest row."""
    return (h.amax().clamp(min=0) - h.amin().clamp(max=0)).expand(h.shape[0])


def at_least(scores: torch.Tensor, threshold: torch.Tensor, block_max: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the entries of scores (N, V) >= threshold (N,), row by row in ascending column order.
    With `block_max` (N, V / B), the maxima of blocks of B columns, blocks below the threshold are skipped
    without a full-size mask."""
    if block_max is None:
        return (scores >= threshold[:, None]).nonzero(as_tuple=True)
    width = scores.shape[1] // block_max.shape[1]
    b_rows, b_cols = (block_max >= threshold[:, None]).nonzero(as_tuple=True)
    blocks = scores.view(-1, width).index_select(0, b_rows * block_max.shape[1] + b_cols)
    hit, offset = (blocks >= threshold[b_rows, None]).nonzero(as_tuple=True)
    return b_rows[hit], b_cols[hit] * width + offset


def fbgemm_pack(q: torch.Tensor, scale: torch.Tensor):
    """fbgemm's prepacked int8 weight, or None where this PyTorch build lacks the quantized engine."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch marks these quantized-tensor APIs deprecated
            zero_points = torch.zeros_like(scale, dtype=torch.long)
            qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zero_points, 0)
            return torch.ops.quantized.linear_prepack(qw, None)
    except (RuntimeError, AttributeError):
        return None


def lm_head_screen(model) -> Int8Screen | None:
    """The model's Int8Screen (or QuantizedHeadScreen for an int8 head), built on first use and cached weakly;
    None where it does not apply."""
    head = plain_cpu_head(model)
    quantized = head is None and int8_cpu_head(model)
    if head is None and not quantized:
        return None
    key = weight_key(model.lm_head.qweight if quantized else head.weight)
    with BUILD_LOCK:
        cached = SCREENS.get(model)
        if cached is None or cached[0] != key:
            SCREENS.pop(model, None)  # free the stale screen before building the new one
            cached = (key, build_screen(lambda: QuantizedHeadScreen(model.lm_head) if quantized
                                        else Int8Screen(head.weight), model.config.d_model))
            SCREENS[model] = cached
        return cached[1]


def int8_cpu_head(model) -> bool:
    """Whether the lm_head is an untied quant.Int8Linear that runs PyTorch's int8 kernel on the CPU."""
    head = model.lm_head
    return (type(head) is Int8Linear and head.qweight.device.type == "cpu" and head.in_features % 64 == 0
            and not getattr(model, "hf_device_map", None) and not model.config.tie_word_embeddings)


def build_screen(make: Callable[[], Int8Screen], width: int) -> Int8Screen | None:
    try:
        screen = make()
        screen.argmax(torch.zeros(1, width), lambda s: s)  # the kernel exists for this shape
        return screen
    except (RuntimeError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------------------
# Beam search: MKL's packed fp32 head
# ------------------------------------------------------------------------------------------------------------
def packed_lm_head(model, rows: int, same_bits: bool = True) -> torch.Tensor | None:
    """MKL's packed copy of the untied fp32 CPU lm_head for `rows`-row products (beam search: batch x beams).

    Beam search needs every log-probability, so the full fp32 head runs each step; MKL's packed GEMM does that
    ~1.4-1.7x faster than F.linear for a few rows. Built once per row count and kept while the model lives
    (0.65 GB for mt5-small's head, one row count at a time); None where it does not apply or where its results
    are not F.linear's bit for bit (then the pack is freed at once).
    """
    head = plain_cpu_head(model)
    if head is None or model.training or not hasattr(torch.ops.mkl, "_mkl_linear"):
        return None
    key = (*weight_key(head.weight), rows)
    with BUILD_LOCK:
        # (key, pack or None, whether it gives F.linear's bits, whether a full pack was tried)
        cached = MKL_PACKS.get(model)
        if cached is None or cached[0] != key or (not same_bits and not cached[3]):
            MKL_PACKS.pop(model, None)  # free the old pack before building the new one
            weight, packed = head.weight.detach(), None
            # a pack of the first 4096 rows shows whether this CPU's packed kernel rounds as F.linear does, before
            # a full-size pack (and the peak memory it costs) exists
            exact = same_bits_on_a_slice(weight, rows)
            if exact or not same_bits:
                try:
                    packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
                except RuntimeError:
                    packed = None
                exact = packed is not None and same_as_f_linear(packed, weight, rows)
            # a pack whose bits differ is kept only for a caller who said it compares within a tolerance
            cached = (key, packed if exact or not same_bits else None, exact, exact or not same_bits)
            MKL_PACKS[model] = cached
        return cached[1] if cached[2] or not same_bits else None


FEWER_ROWS: dict[tuple[int, int, int], bool] = {}   # (pack rows, rows used, width) -> whether MKL gets it right


def pack_takes_fewer_rows(pack_rows: int, rows: int, width: int) -> bool:
    """Whether a head packed for `pack_rows`-row products computes `rows` (< pack_rows) rows right here (MKL's
    packed B does not depend on the row count on the CPUs measured; checked once per shape on a small pack)."""
    key = (pack_rows, rows, width)
    if key not in FEWER_ROWS:
        g = torch.Generator().manual_seed(0)
        weight, probe = torch.randn(4096, width, generator=g), torch.randn(rows, width, generator=g)
        try:
            with torch.no_grad():
                got = torch.ops.mkl._mkl_linear(probe, torch.ops.mkl._mkl_reorder_linear_weight(weight, pack_rows),
                                                weight, None, rows)
                FEWER_ROWS[key] = got.shape == (rows, 4096) and torch.allclose(
                    got, torch.nn.functional.linear(probe, weight), rtol=1e-5, atol=1e-4)
        except RuntimeError:
            FEWER_ROWS[key] = False
    return FEWER_ROWS[key]


def same_bits_on_a_slice(weight: torch.Tensor, rows: int, slice_rows: int = 4096) -> bool:
    try:
        part = weight[:slice_rows]
        return same_as_f_linear(torch.ops.mkl._mkl_reorder_linear_weight(part, rows), part, rows)
    except RuntimeError:
        return False


def same_as_f_linear(packed: torch.Tensor, weight: torch.Tensor, rows: int) -> bool:
    """Whether MKL's packed kernel gives F.linear's very bits here. It does on some CPUs (AMD EPYC, AVX2 and
    AVX-512) and not on others (Intel Xeon with AVX-512, where 90% of mt5-small's logits differ in the last
    bits): there beams run F.linear, so their tokens and scores stay transformers' own."""
    probe = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(torch.ops.mkl._mkl_linear(probe, packed, weight, None, rows),
                           torch.nn.functional.linear(probe, weight))

