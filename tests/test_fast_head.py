"""model.fast_head: the int8 screen and MKL's packed head give exactly the plain fp32 results, apply only where
they should, and their cached copies live and die with the model."""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from model import MT5Config, MT5ForConditionalGeneration
from model.config import GenerationConfig
from model.fast_head import MKL_PACKS, SCREENS, FastHead, Int8Screen, lm_head_screen, packed_lm_head
from model.generation import encode_for_generation, greedy_or_sample

TINY = dict(vocab_size=512, d_model=64, d_kv=8, d_ff=48, num_layers=2, num_heads=3)


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return MT5ForConditionalGeneration(MT5Config(**{**TINY, **overrides})).eval()


def needs_screen(m):
    if lm_head_screen(m) is None:
        pytest.skip("no int8 kernel here (fbgemm and _weight_int8pack_mm both missing)")


def test_screen_fallback_rows_equal_the_fp32_argmax():
    """One candidate per row: the bound often fails, and those rows are rescored in full."""
    m = tiny()
    needs_screen(m)
    weight = m.lm_head.weight
    h = torch.randn(64, TINY["d_model"])
    banned = torch.zeros(64, TINY["vocab_size"], dtype=torch.bool)
    banned[::3, F.linear(h, weight).argmax(-1)[::3]] = True  # bans move some rows' best token
    process = lambda scores, rows: scores.masked_fill(banned if rows is None else banned[rows], float("-inf"))
    head = FastHead(m, screen=Int8Screen(weight, candidates=1))
    with torch.no_grad():
        tokens = head.argmax(h, process)
        expected = process(F.linear(h, weight), None).argmax(-1)
    assert head.fallbacks > 0, "the test must reach the fallback branch"
    assert torch.equal(tokens, expected)


def test_greedy_decoding_with_fallbacks_equals_plain_decoding():
    m = tiny(1)
    needs_screen(m)
    ids = torch.randint(3, TINY["vocab_size"], (4, 9))
    cfg = GenerationConfig(max_new_tokens=12, no_repeat_ngram_size=2, min_new_tokens=4)
    screened = FastHead(m, screen=Int8Screen(m.lm_head.weight, candidates=1))
    plain = FastHead(m, screen=False)
    out = [greedy_or_sample(encode_for_generation(m, ids, None, 1, head), cfg, None).sequences
           for head in (screened, plain)]
    assert screened.fallbacks > 0 and plain.fallbacks == 0
    assert torch.equal(out[0], out[1])
    assert torch.equal(out[0], m.generate(ids, generation_config=cfg))  # the default screen (256 candidates)


def test_mkl_packed_head_equals_f_linear():
    if not hasattr(torch.ops.mkl, "_mkl_linear"):
        pytest.skip("this PyTorch build has no torch.ops.mkl._mkl_linear")
    m = tiny()
    head = FastHead.for_model(m, rows=6)
    if head.packed is None:
        pytest.skip("MKL could not pack the weight here")
    h = torch.randn(6, TINY["d_model"])
    with torch.no_grad():
        assert torch.equal(head.logits(h), F.linear(h, m.lm_head.weight))
        assert torch.equal(head.logits(h[:5]), F.linear(h[:5], m.lm_head.weight))  # other row counts: plain


def test_fast_paths_only_for_untied_fp32_cpu_heads_not_dispatched():
    assert lm_head_screen(tiny(tie_word_embeddings=True)) is None
    assert packed_lm_head(tiny(tie_word_embeddings=True), 4) is None
    assert lm_head_screen(tiny().to(torch.bfloat16)) is None
    dispatched = tiny()
    dispatched.hf_device_map = {"": "cpu"}
    assert lm_head_screen(dispatched) is None and packed_lm_head(dispatched, 4) is None
    assert packed_lm_head(tiny().train(), 4) is None


def test_caches_go_with_the_model_and_follow_in_place_changes():
    gc.collect()
    before = len(SCREENS), len(MKL_PACKS)
    m = tiny()
    needs_screen(m)
    screen = lm_head_screen(m)
    assert lm_head_screen(m) is screen and SCREENS[m][1] is screen and not hasattr(m, "_int8_screen")
    with torch.no_grad():
        m.lm_head.weight.mul_(-1.0)  # in place: same data_ptr, new _version
    rebuilt = lm_head_screen(m)
    assert rebuilt is not screen
    h = torch.randn(8, TINY["d_model"])
    tokens, undecided = rebuilt.argmax(h, lambda s: s)
    assert torch.equal(tokens[~undecided], F.linear(h, m.lm_head.weight).argmax(-1)[~undecided])
    packed_lm_head(m, 4)
    assert len(MKL_PACKS) == before[1] + hasattr(torch.ops.mkl, "_mkl_linear")
    assert not hasattr(m, "_mkl_packed_head")
    alive = weakref.ref(rebuilt)
    del screen, rebuilt, m
    gc.collect()
    assert alive() is None, "the screen outlived its model"
    assert (len(SCREENS), len(MKL_PACKS)) == before


def test_a_pack_whose_results_differ_from_f_linear_is_refused():
    """The probe compares bits: a pack of other weights (as a kernel that rounds differently would) is refused,
    and beams then run F.linear."""
    if not hasattr(torch.ops.mkl, "_mkl_linear"):
        pytest.skip("this PyTorch build has no torch.ops.mkl._mkl_linear")
    from model.fast_head import same_as_f_linear

    weight = torch.randn(300, 64)
    try:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 4)
    except RuntimeError:
        pytest.skip("MKL could not pack the weight here")
    other = weight.clone()
    other[7, 3] += 1e-3   # one weight off: row 7's logits differ
    assert not same_as_f_linear(packed, other, 4)


@pytest.mark.parametrize("vocab", [640, 650])   # whole blocks of 64, and a remainder (the plain mask)
def test_block_skipping_finds_exactly_the_entries_above_each_rows_threshold(vocab):
    from model.fast_head import at_least

    scores = torch.randn(5, vocab)
    scores[2, 100:200] = float("-inf")
    threshold = torch.tensor([1.5, 2.0, 0.5, 9.0, float("-inf")])
    block_max = scores.view(5, -1, 64).amax(-1) if vocab % 64 == 0 else None
    rows, cols = at_least(scores, threshold, block_max)
    want_rows, want_cols = (scores >= threshold[:, None]).nonzero(as_tuple=True)
    assert torch.equal(rows, want_rows) and torch.equal(cols, want_cols)
    assert (rows == 3).sum() == 0 and (rows == 4).sum() == vocab   # none above 9; all at -inf's threshold


def test_the_rescored_candidates_carry_f_linears_bits():
    """The winner is chosen among candidates recomputed with F.linear on their gathered rows (padded to 64): those
    values are the very bits of F.linear over the whole head, so ties break as the full argmax breaks them."""
    weight = torch.randn(4096, 96) * 0.05
    h = torch.randn(3, 96)
    full = F.linear(h, weight)
    for size in (1, 37, 700, 1500):
        idx = torch.randperm(4096)[:size].sort().values
        padded = torch.cat([idx, idx[:1].expand(-size % 64)])
        assert torch.equal(F.linear(h, weight[padded])[:, :size], full[:, idx])
        assert torch.equal(F.linear(h[:1], weight[padded])[:, :size], F.linear(h[:1], weight)[:, idx])


def int8_tiny(seed=2):
    """A tiny model with an int8 head (quant.Int8Linear, as load_in_8bit makes it); width 64 for the kernel."""
    from model.quant import Int8Linear

    m = tiny(seed, vocab_size=1024)
    with torch.no_grad():
        m.lm_head.weight *= 0.05   # logits of a few units, as trained heads give: bf16 results then tie often
    m.lm_head = Int8Linear.from_float(m.lm_head)
    return m


def test_an_int8_heads_screen_picks_exactly_the_int8_heads_argmax_ties_included():
    m = int8_tiny()
    screen = lm_head_screen(m)
    if screen is None:
        pytest.skip("no fbgemm here")
    from model.fast_head import QuantizedHeadScreen

    assert isinstance(screen, QuantizedHeadScreen)
    h = torch.randn(256, TINY["d_model"]) * 3
    with torch.no_grad():
        full = m.logits(h[:, None, :])[:, 0, :]                    # the int8 kernel's bf16 logits, as fp32
        tokens, undecided = screen.argmax(h, lambda s: s)
    assert not undecided.any()
    assert torch.equal(tokens, full.argmax(-1))
    assert (full == full.amax(-1, keepdim=True)).sum(-1).max() > 1, "no ties: the test would not check them"
    strict = FastHead(m, screen=QuantizedHeadScreen(m.lm_head, candidates=1))   # most rows fall back
    with torch.no_grad():
        assert torch.equal(strict.argmax(h, lambda s, rows: s), full.argmax(-1)) and strict.fallbacks > 0


def test_int8_greedy_decoding_with_the_screen_equals_the_full_int8_head():
    m = int8_tiny(3)
    if lm_head_screen(m) is None:
        pytest.skip("no fbgemm here")
    ids = torch.randint(3, 1024, (4, 9))
    cfg = GenerationConfig(max_new_tokens=12, no_repeat_ngram_size=2, min_new_tokens=4)
    out = [greedy_or_sample(encode_for_generation(m, ids, None, 1, head), cfg, None).sequences
           for head in (FastHead(m), FastHead(m, screen=False))]
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("quantized", [False, True])
def test_the_screens_bound_holds_for_every_row_of_a_batch_of_unequal_rows(quantized):
    """fbgemm quantizes a batch's activations over one range for the whole tensor: a row of small states beside
    a row 100x larger is quantized coarsely, and its bound must say so (a per-row range understated it ~9x)."""
    from model.fast_head import QuantizedHeadScreen

    m = int8_tiny() if quantized else tiny(vocab_size=1024)
    screen = lm_head_screen(m)
    if screen is None or screen.packed is None:
        pytest.skip("no fbgemm here")
    assert isinstance(screen, QuantizedHeadScreen) == quantized
    h = torch.randn(4, TINY["d_model"])
    h[1] *= 100
    h[3] *= 0.01
    with torch.no_grad():
        approx, bound = screen.approximate(h)
        hb = h.to(torch.bfloat16).float() if quantized else h
        weight = m.lm_head.kernel_weight().float() * m.lm_head.kernel_scales().float()[:, None] if quantized \
            else torch.cat([p.unpack()[0].dequantize() for p in screen.packed])
        error = (approx - F.linear(hb, weight)).abs().amax(-1)
    assert error[0] > bound[0] / 20, "row 0 must be quantized as coarsely as row 1 for the test to check it"
    assert (error <= bound).all(), (error, bound)


def test_ranking_logits_in_blocks_of_the_pack_agree_with_f_linear_a_short_last_block_included():
    """Rank classification's path: the pack for 8 rows, 8 + 5 states; the 5 go through the pack with their own
    row count where MKL computes that right (probed), else padded. Both agree with F.linear to rounding."""
    if not hasattr(torch.ops.mkl, "_mkl_linear"):
        pytest.skip("no MKL here")
    from model.fast_head import FEWER_ROWS, pack_takes_fewer_rows

    m = tiny(5, vocab_size=4096, d_model=128)
    head = FastHead.for_model(m, rows=8, same_bits=False)
    assert head.packed is not None and head.packed_rows == 8
    states = torch.randn(13, 128)
    with torch.no_grad():
        got = head.logits_in_blocks(states)
        expected = F.linear(states, m.lm_head.weight)
    assert got.shape == (13, 4096)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (8, 5, 128) in FEWER_ROWS and FEWER_ROWS[(8, 5, 128)] == pack_takes_fewer_rows(8, 5, 128)
    FEWER_ROWS[(8, 5, 128)] = False            # the padded way gives the same values
    try:
        with torch.no_grad():
            torch.testing.assert_close(head.logits_in_blocks(states), expected, rtol=1e-5, atol=1e-5)
    finally:
        FEWER_ROWS.pop((8, 5, 128))
