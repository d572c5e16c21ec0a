"""Certified beam search: the int8 screen of the output projection for beams, with the same tokens as fp32.

A beam step needs, for every running row i, its best `keep` continuations and their log-probabilities
`logit - lse_i` (lse_i: the log-normaliser over the raw logits, as transformers' log_softmax-then-bans). Reading
the fp32 head for that is most of a step on the CPU; the int8 screen reads a quarter of the bytes. Here the int8
logits are turned into exact decisions, or into a fallback, never into a different token.

The proof, per step (a_ij approximate, e_ij exact fp32 logit, b_i the screen's bound, |a_ij - e_ij| <= b_i):
1. Each row's exact top `keep` (after the bans, which are the same on a and e): the keep best approximate tokens
   have e >= a - b >= t_i - b (t_i: the keep-th best approximate score), so the keep-th best exact logit is
   >= t_i - b, and a token among the exact keep best has a >= e - b >= t_i - 2 b. Every token with
   a >= t_i - 2 b is rescored exactly (F.linear on those head rows: the bits of the full product), so the row's
   exact top `keep` is found among them.
2. The log-normaliser: lse_i = log(sum_rescored exp(e) + sum_rest exp(e)). The rescored sum is exact; each other
   term lies in [exp(a - b), exp(a + b)], so lse_i lies in an interval of half-width `lam_i`, which the search
   carries. Sums are in float64; a rounding allowance (`rounding`) covers our arithmetic and transformers' (its
   log_softmax, its additions to the running scores), both a few units in the last place.
3. The search itself only compares scores: the best `keep` candidates of each input in order, the cut after
   them, the merge of finished hypotheses and the "can a running beam still win" test. A comparison is decided
   when the gap between the two scores exceeds the sum of their uncertainties. Uncertainties are carried per
   hypothesis (`U`, the sum of its steps' lam and rounding) and per pair of running beams (`D`): two beams that
   share a parent up to some step share those steps' lse exactly, so only the steps after they parted count.
   Transitivity of the true values makes adjacent comparisons enough for an order.
4. Fallbacks: a row with too many candidates, or fewer than `keep` allowed tokens, gets its full exact logits; a
   step whose comparisons are not decided is redone with every row's full exact logits (lam = rounding only);
   if it is still undecided (a near-tie that earlier screened steps' uncertainty hides), `Uncertified` is raised
   and the caller reruns the whole search on the exact fp32 path. Every branch is forced in
   tests/test_beam_screen.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .fast_head import (NEG_INF, FastHead, Int8Screen, QuantizedHeadScreen, at_least, lm_head_screen,
                        log_normalizer_parts)

REAL = -1e8         # scores at or below this are the search's placeholders (-1e9 penalties), not hypotheses
MARGIN = 2.0 ** -20  # rounding allowance per step: ~16 units in the last place of fp32, and 1e-6 absolute


class Uncertified(Exception):
    """The screened search met a comparison its bounds cannot decide: rerun on the exact path."""


def rounding(x: torch.Tensor) -> torch.Tensor:
    """The rounding allowance for a score of magnitude |x| (both sides' fp32 arithmetic, with room to spare;
    the absolute part covers the fp32 sum of exp(logit - max) in transformers' log_softmax)."""
    return MARGIN * (x.abs() + 1.0)


@dataclass
class RowCandidates:
    """Each decoder row's best `keep` continuations (after the bans) and its log-normaliser
    lse = shift + log_sum (kept apart so log-probabilities round to their own size, as in log_softmax)."""
    logits: torch.Tensor   # (N, keep) exact processed logits, best first
    tokens: torch.Tensor   # (N, keep)
    shift: torch.Tensor    # (N, 1)
    log_sum: torch.Tensor  # (N, 1) centre
    lam: torch.Tensor      # (N,) |log_sum - exact| <= lam
    full: bool             # True: exact logits of every row (lam is rounding only)

    def log_probs(self) -> torch.Tensor:
        """(N, keep) the candidates' log-probabilities."""
        return (self.logits - self.shift) - self.log_sum


# process(scores (N, V), rows) applies the bans in place (rows: which run rows, None for all)
Process = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def full_rows(head: FastHead, h: torch.Tensor, process: Process, keep: int) -> RowCandidates:
    """The exact path for one step: every row's full fp32 logits (F.linear over all rows, transformers' bits)."""
    logits = head.logits(h)
    shift, log_sum = log_normalizer_parts(logits)
    top, tokens = torch.topk(process(logits, None), keep, dim=-1)
    return RowCandidates(top, tokens, shift, log_sum, rounding(log_sum[:, 0]), full=True)


def screened_rows(screen: Int8Screen, h: torch.Tensor, process: Process, keep: int,
                  cap: int = 32768) -> RowCandidates | None:
    """Step 1-2 of the proof on the int8 screen; None when a row needs its full logits (more than `cap`
    candidates, or fewer than `keep` allowed tokens)."""
    h = h.float()
    raw, act = screen.approximate(h)
    bound = screen.bound(h, act)                                            # (N,)
    scores = process(raw.clone(), None)
    t = torch.topk(scores, keep, dim=-1).values[:, -1]                     # keep-th best approximate
    if not bool(torch.isfinite(t).all()):
        return None
    need = t - 2.02 * bound - 2e-5
    # banned tokens count in the log-normaliser (transformers bans after log_softmax): rescored on the raw scores
    rows, cols = at_least(raw, need)
    if bool((torch.bincount(rows, minlength=len(h)) > cap).any()):
        return None
    union = torch.unique(cols, sorted=True)
    if len(union) > 2 * cap:       # rescoring that many rows costs about what the full head does
        return None
    exact = screen.rescore_columns(h, union)                                # (N, U) raw exact logits
    mine = torch.full_like(exact, NEG_INF)
    where = torch.searchsorted(union, cols)
    mine[rows, where] = exact[rows, where]                                 # each row's own candidates
    mine.masked_fill_(scores.index_select(1, union) == NEG_INF, NEG_INF)    # ... that no ban removed
    top, at = torch.topk(mine, keep, dim=-1)
    shift, log_sum, lam = bounded_log_normalizer(raw, exact, union, bound)
    return RowCandidates(top, union[at], shift, log_sum, lam, full=False)


def bounded_log_normalizer(raw: torch.Tensor, exact: torch.Tensor, union: torch.Tensor, bound: torch.Tensor,
                           chunk: int = 32768) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The log-normaliser as shift (N, 1) + log_sum (N, 1), and the half-width (N,) of log_sum: exact terms on
    the rescored columns `union`, approximate ones (each within a factor exp(+-bound)) elsewhere.
    raw (N, V) approximate logits, exact (N, len(union))."""
    shift = torch.maximum(raw.amax(-1), exact.amax(-1))[:, None]          # (N, 1)
    rest = torch.zeros(len(raw), dtype=torch.float64)
    buf = raw.new_empty(len(raw), min(chunk, raw.shape[1]))
    bounds = torch.searchsorted(union, torch.arange(0, raw.shape[1] + chunk, chunk)).tolist()
    for i, start in enumerate(range(0, raw.shape[1], chunk)):
        part = raw[:, start:start + chunk]
        terms = torch.sub(part, shift, out=buf[:, :part.shape[1]]).clamp_(min=-80.0).exp_()
        terms[:, union[bounds[i]:bounds[i + 1]] - start] = 0.0          # the rescored columns are counted exactly
        rest += terms.sum(-1, dtype=torch.float64)
    known = (exact - shift).exp().sum(-1, dtype=torch.float64)
    # each fp32 exp is within 2^-22 (relative) of the true value; a term below e^-80 was counted as e^-80
    b = bound.double()
    rest_hi = rest * (1 + 2 ** -22) * torch.exp(b)
    rest_lo = (rest * (1 - 2 ** -22) - 1.9e-35 * raw.shape[1]).clamp(min=0.0) * torch.exp(-b)
    known_hi, known_lo = known * (1 + 2 ** -22), known * (1 - 2 ** -22)
    centre = torch.log(known + rest)
    lam = torch.maximum(torch.log(known_hi + rest_hi) - centre, centre - torch.log(known_lo + rest_lo))
    lam = lam + rounding(centre)
    return shift, centre.float()[:, None], lam.float()


# ------------------------------------------------------------------------------------------------------------
# The search's comparisons (step 3)
# ------------------------------------------------------------------------------------------------------------
def decided_order(values: torch.Tensor, unc: torch.Tensor, count: int, live: torch.Tensor,
                  cuts: tuple[int, ...] | None = None) -> bool:
    """Whether the best `count` of `values` (B, n) are decided: the cut after them (and after each position in
    `cuts`) and, when `cuts` is None, their order too. Decided means every pair across a cut (or adjacent in
    the order) differs by more than its uncertainty `unc` (B, n, n). Items whose `live` (B,) is False are not
    checked; values <= REAL (the -1e9 placeholders) do not compete."""
    n = values.shape[1]
    count = min(count, n)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices     # (B, n)
    v = torch.gather(values, 1, order)
    u = torch.gather(torch.gather(unc, 1, order[:, :, None].expand(-1, -1, n)), 2, order[:, None, :].expand(
        -1, n, -1))                                                                # (B, n, n) in sorted order
    real = v > REAL
    gaps = v[:, :, None] - v[:, None, :]                                           # (B, n, n): i above j
    clear = (gaps > u) | ~real[:, None, :] | ~real[:, :, None]
    position = torch.arange(n)
    needed = torch.zeros(n, n, dtype=torch.bool)
    for cut in (count, *(cuts or ())):
        if 0 < cut < n:
            needed |= (position[:, None] < cut) & (position[None, :] >= cut)
    if cuts is None and count > 1:
        needed |= (position[None, :] == position[:, None] + 1) & (position[None, :] < count)
    ok = (clear | ~needed).flatten(1).all(1)
    return bool((ok | ~live).all())


class PathBook:
    """What each screened step left uncertain, per decoder row: the log-normaliser's centre and half-width, and
    the row's states (kept for an exact recount). Step s is the s-th generated token; a hypothesis's rows per
    step are transformers' beam indices (Beams.running_rows), so its uncertainty is read along its path."""

    def __init__(self, rows: int):
        self.rows = rows
        self.lse: list[torch.Tensor] = []     # per step (N,)
        self.lam: list[torch.Tensor] = []     # per step (N,); rounding only where the step was exact
        self.states: list[torch.Tensor | None] = []   # per step (N, D), None where it was exact

    def record(self, step: int, rc: RowCandidates, h: torch.Tensor) -> None:
        del self.lse[step:], self.lam[step:], self.states[step:]   # a redone step replaces its first try
        self.lse.append((rc.shift + rc.log_sum)[:, 0])
        self.lam.append(rc.lam)
        self.states.append(None if rc.full else h.float())

    def screened(self) -> list[int]:
        return [s for s, h in enumerate(self.states) if h is not None]

    def recount(self, logits: Callable[[torch.Tensor], torch.Tensor], block: int = 64) -> torch.Tensor:
        """Exact log-normalisers for every screened step (full logits for their stored states, `block` rows per
        product); returns (steps, N) old centre - new centre, by which the scores along each path move."""
        steps = self.screened()
        shift = torch.zeros(len(self.lse), self.rows)
        if not steps:
            return shift
        h = torch.cat([self.states[s] for s in steps])
        exact = torch.cat([sum(log_normalizer_parts(logits(h[i:i + block])))[:, 0]
                           for i in range(0, len(h), block)]).view(len(steps), self.rows)
        for j, s in enumerate(steps):
            shift[s] = self.lse[s] - exact[j]
            self.lse[s], self.lam[s], self.states[s] = exact[j], rounding(exact[j]), None
        return shift


def along(table: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """table[s] (N,) read along paths: rows (B, n, S) flat decoder rows per step (-1: no token) -> (B, n, S)."""
    steps = rows.shape[-1]
    if steps == 0:
        return torch.zeros(rows.shape)
    stacked = torch.stack(table[:steps])                                  # (S, N)
    index = rows.clamp(min=0).long()
    flat = stacked[torch.arange(steps).expand_as(index), index]
    return torch.where(rows >= 0, flat, torch.zeros_like(flat))


def path_uncertainty(book: PathBook, rows: torch.Tensor, scores: torch.Tensor, scale: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncertainty of hypotheses' (scaled) scores: alone (B, n) and in pairs (B, n, n).

    rows (B, n, S) the decoder row behind each token (-1 after a hypothesis ends), scores (B, n) as compared,
    scale (B, n) the length penalty's factor 1 / length**lp (1 for running beams). Steps two hypotheses share
    (same row) carry the same error in both: it cancels, up to their different scales. Rounding: each step
    adds at most MARGIN * (|unscaled score| + 2) (the score only falls along a path, so its final size bounds
    every step's), and the last division by the length penalty one more."""
    lam = along(book.lam, rows)                                          # (B, n, S)
    used = rows >= 0
    raw = (scores / scale).abs()                                          # unscaled size
    rnd_step = MARGIN * (raw + 2.0)                                       # (B, n)
    per_step = lam + rnd_step[:, :, None] * used                          # (B, n, S)
    alone = scale.abs() * (per_step.sum(-1) + MARGIN * raw)
    shared = (rows[:, :, None, :] == rows[:, None, :, :]) & used[:, :, None, :]       # (B, n, n, S)
    c_i, c_j = scale.abs()[:, :, None], scale.abs()[:, None, :]
    own_i = (per_step[:, :, None, :] * ~shared).sum(-1) * c_i
    own_j = (per_step[:, None, :, :] * ~shared).sum(-1) * c_j
    common = (per_step[:, :, None, :] * shared).sum(-1) * (c_i - c_j).abs()
    pairs = own_i + own_j + common + MARGIN * (raw[:, :, None] * c_i + raw[:, None, :] * c_j)
    return alone, pairs


def improvable_decided(best: torch.Tensor, best_u: torch.Tensor, finished: torch.Tensor,
                       finished_u: torch.Tensor, check: torch.Tensor) -> bool:
    """still_improvable's comparison of the best running beam's score best (B,) with the lowest finished score
    (finished (B, K)) is decided wherever `check` (B,) holds: the running beam is above every finished score's
    upper end, or below the lowest lower end."""
    clear = (best - best_u > (finished + finished_u).amin(1)) | (best + best_u < (finished - finished_u).amin(1))
    return bool((clear | ~check).all())


@dataclass
class ScreenStats:
    """What the screen did in one search (observable for tests and benchmarks)."""
    steps: int = 0            # steps that tried the screen
    full_rows: int = 0        # ... whose rows needed full logits (too many candidates, or a wide lse)
    redone: int = 0           # steps redone on full logits because a comparison was undecided
    recounts: int = 0         # exact recounts of the earlier screened steps' log-normalisers
    restarted: bool = False   # the search reran on the exact path


class BeamScreen:
    """The int8 screen for one beam search; None from `for_search` where it does not apply.

    A screened step whose log-normaliser is wider than `lam_cap` takes full logits instead (the comparisons
    after it would rarely be decided), and the screen then rests for a few steps (doubling while it keeps
    failing), so a model whose distributions are too flat for the screen pays little for trying."""

    def __init__(self, screen: Int8Screen, head: FastHead, rows: int, cap: int | None = None,
                 lam_cap: float = 1e-3):
        # a row's candidates are rescored from fp32 rows of the head: up to an eighth of them per row, a quarter
        # for all rows together, and the step still reads far less than the full head
        vocab = head.model.lm_head.out_features
        self.screen, self.head, self.lam_cap = screen, head, lam_cap
        self.cap = vocab // 8 if cap is None else cap
        self.book = PathBook(rows)
        self.stats = ScreenStats()
        self.rest = self.pause = 0

    MAX_ROWS = 12

    @classmethod
    def for_search(cls, model, head: FastHead, rows: int) -> "BeamScreen | None":
        """The fp32 head's screen, for at most MAX_ROWS decoder rows (batch x beams). Beyond that one read of
        the fp32 head serves enough rows, and the union of their candidates grows, that the full product wins
        (mt5-small, XLSum preset: screened 1.3 s against 2.1 s for one input, 3.1 against 4.3 for three, 3.9
        against 2.4 for four). Not an int8 head's: its logits are rounded to bf16, so hypotheses of different
        beams tie at the cuts often, undecidable by any bound, and most searches would rerun (its full product
        already reads int8 weights)."""
        if rows > cls.MAX_ROWS:
            return None
        screen = lm_head_screen(model)
        return cls(screen, head, rows) if screen and not isinstance(screen, QuantizedHeadScreen) else None

    def rows(self, h: torch.Tensor, process: Process, keep: int, full: bool) -> RowCandidates:
        rc = None
        if not full and self.rest > 0:
            self.rest -= 1
        elif not full:
            self.stats.steps += 1
            rc = screened_rows(self.screen, h, process, keep, self.cap)
            if rc is None or float(rc.lam.max()) > self.lam_cap:
                self.stats.full_rows += 1
                self.pause = min(2 * self.pause + 1, 8)
                self.rest, rc = self.pause, None
            else:
                self.pause = 0
        if rc is None:
            rc = full_rows(self.head, h, process, keep)
        return rc
