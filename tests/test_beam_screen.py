"""Certified beam search (model/beam_screen.py): beams on the int8 screen give transformers' tokens, and every
fallback (full rows, a redone step, an exact rerun of the search) is taken when it should be and changes no token."""
import json

import pytest
import torch

from model import MT5Config, MT5ForConditionalGeneration, UMT5Config, UMT5ForConditionalGeneration, beam_screen
from model import generation
from model.beam_screen import (REAL, BeamScreen, bounded_log_normalizer, decided_order, full_rows,
                               improvable_decided, screened_rows)
from model.fast_head import FastHead, lm_head_screen, log_normalizer
from refutil import run_reference

SHAPE = dict(vocab_size=4096, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4)
SETTINGS = {
    "beam4": dict(max_new_tokens=12, num_beams=4),
    "xlsum": dict(max_length=16, num_beams=4, no_repeat_ngram_size=2, length_penalty=0.6),
    "beam3_ret2_early": dict(max_new_tokens=10, num_beams=3, num_return_sequences=2, early_stopping=True),
    "beam4_never_lp2_min": dict(max_new_tokens=9, num_beams=4, early_stopping="never", length_penalty=2.0,
                                min_new_tokens=4),
}


def random_model(family="mt5", seed=0, peak=3.0, eos=0.7):
    """Random weights at transformers' init, the head scaled by `peak` (at init, d_model 64 gives flatter
    distributions than trained models, too flat for the screen: peak 1) and eos pulled towards the decoder's
    typical state by `eos`, so some beams finish early and the finished ones are compared with running ones."""
    torch.manual_seed(seed)
    cfg_cls, cls = (UMT5Config, UMT5ForConditionalGeneration) if family == "umt5" else (
        MT5Config, MT5ForConditionalGeneration)
    m = cls(cfg_cls(**SHAPE, tie_word_embeddings=False)).eval()
    ids, mask = inputs()
    with torch.no_grad():
        m.lm_head.weight *= peak
        dec = torch.randint(3, SHAPE["vocab_size"], (3, 10), generator=torch.Generator().manual_seed(seed))
        dec[:, 0] = 0
        states = m(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                   output_hidden_states=True).decoder_hidden_states[-1].reshape(-1, SHAPE["d_model"])
        typical = states.mean(0)
        m.lm_head.weight[1] += eos * typical / typical.norm() * m.lm_head.weight.norm(dim=-1).mean()
    return m


def inputs(seed=1, batch=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, SHAPE["vocab_size"], (batch, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    ids[1, 9:] = 0
    ids[:, -1] = 1
    return ids, mask


def needs_screen(m):
    """Skips only where PyTorch has no int8 kernel at all; where it has one, the screen must build."""
    if "fbgemm" not in torch.backends.quantized.supported_engines and not hasattr(torch, "_weight_int8pack_mm"):
        pytest.skip("no int8 kernel here (fbgemm and _weight_int8pack_mm both missing)")
    assert lm_head_screen(m) is not None, "the int8 screen failed to build"


@pytest.fixture
def screens(monkeypatch):
    """The BeamScreen of every search, for its stats."""
    made = []
    original = BeamScreen.for_search

    def spy(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(BeamScreen, "for_search", spy)
    return made


def exact_path(m, ids, mask, monkeypatch, **kwargs):
    """The search without the screen: F.linear's logits every step (the path the parity tests cover)."""
    with monkeypatch.context() as patch:
        patch.setattr(BeamScreen, "for_search", lambda *a, **k: None)
        return m.generate(ids, mask, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam-screen")
    cases = []
    ids, mask = inputs()
    for family in ("mt5", "umt5"):
        path = root / family
        random_model(family).save_pretrained(path)
        for name, kwargs in SETTINGS.items():
            cases.append(dict(name=f"{family}-{name}", dir=str(path), family=family, input_ids=ids.tolist(),
                              attention_mask=mask.tolist(), kwargs=kwargs))
    (root / "jobs.json").write_text(json.dumps({"cases": cases}))
    run_reference("ref_generate.py", root / "jobs.json", root / "out.json")
    return json.loads((root / "out.json").read_text())


def trim(rows):
    return [row[: row.index(1, 1) + 1] if 1 in row[1:] else row for row in map(list, rows)]


@pytest.mark.parametrize("family", ["mt5", "umt5"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_screened_beams_give_transformers_tokens(reference, screens, family, setting):
    m = random_model(family)
    needs_screen(m)
    ids, mask = inputs()
    ours = m.generate(ids, mask, **SETTINGS[setting])
    assert trim(ours.tolist()) == trim(reference[f"{family}-{setting}"]["sequences"])
    stats = screens[-1].stats
    assert stats.steps >= 8 and stats.full_rows == 0 and not stats.restarted, stats   # the screen decided


def test_the_screen_is_not_used_where_scores_or_sampling_need_every_logit(screens):
    m = random_model()
    ids, mask = inputs()
    m.generate(ids, mask, num_beams=3, max_new_tokens=4, output_scores=True, return_dict_in_generate=True)
    m.generate(ids, mask, num_beams=3, max_new_tokens=4, do_sample=True, seed=0)
    m.generate(ids, mask, num_beams=3, max_new_tokens=4, repetition_penalty=1.3)
    assert screens == []
    m.generate(ids, mask, num_beams=3, max_new_tokens=4, return_dict_in_generate=True)   # beam indices only
    assert len(screens) == 1 and screens[-1].stats.steps == 4


def test_rows_with_too_many_candidates_get_full_logits(screens, monkeypatch):
    m = random_model()
    ids, mask = inputs()
    expected = exact_path(m, ids, mask, monkeypatch, **SETTINGS["xlsum"])
    monkeypatch.setattr(BeamScreen, "__init__", lambda self, screen, head, rows, **kw: original_init(
        self, screen, head, rows, cap=0))
    assert torch.equal(m.generate(ids, mask, **SETTINGS["xlsum"]), expected)
    stats = screens[-1].stats
    assert stats.full_rows == stats.steps > 0 and not stats.restarted


original_init = BeamScreen.__init__


def test_rows_with_fewer_allowed_tokens_than_candidates_get_full_logits(screens, monkeypatch):
    """A prefix constraint leaves 3 tokens where a 4-beam step keeps 8 candidates: full logits, same tokens."""
    m = random_model()
    ids, mask = inputs()

    def allowed(batch_id, row):
        return [5, 9, 1] if len(row) % 2 else [7, 11, 13, 17, 19, 23, 29, 31, 37, 41]

    kwargs = dict(num_beams=4, max_new_tokens=8, prefix_allowed_tokens_fn=allowed)
    expected = exact_path(m, ids, mask, monkeypatch, **kwargs)
    assert torch.equal(m.generate(ids, mask, **kwargs), expected)
    stats = screens[-1].stats
    assert stats.full_rows > 0 and not stats.restarted, stats


def test_undecided_steps_are_redone_on_full_logits_and_earlier_steps_recounted(screens, monkeypatch):
    """Screened log-normalisers said to be 5 nats uncertain (and accepted: lam_cap raised) leave comparisons
    between beams undecided: the step is redone on exact logits, the earlier screened steps are recounted
    exactly, and the step is decided, with the exact path's tokens."""
    m = random_model()
    ids, mask = inputs()
    expected = exact_path(m, ids, mask, monkeypatch, **SETTINGS["xlsum"])
    real = beam_screen.screened_rows

    def loose(*args, **kwargs):
        rc = real(*args, **kwargs)
        if rc is not None:
            rc.lam = rc.lam + 5.0
        return rc

    monkeypatch.setattr(beam_screen, "screened_rows", loose)
    monkeypatch.setattr(BeamScreen, "__init__", lambda self, screen, head, rows, **kw: original_init(
        self, screen, head, rows, lam_cap=10.0))
    assert torch.equal(m.generate(ids, mask, **SETTINGS["xlsum"]), expected)
    stats = screens[-1].stats
    assert stats.redone > 0 and stats.recounts > 0 and not stats.restarted, stats


def test_a_flat_model_rests_the_screen_and_keeps_its_tokens(screens, monkeypatch):
    """At transformers' init a d_model-64 head gives distributions too flat for the screen: its log-normaliser
    is too wide, so those steps take full logits and the screen rests for a while between tries."""
    m = random_model(peak=1.0)
    ids, mask = inputs()
    expected = exact_path(m, ids, mask, monkeypatch, **SETTINGS["beam4"])
    assert torch.equal(m.generate(ids, mask, **SETTINGS["beam4"]), expected)
    stats = screens[-1].stats
    assert stats.full_rows == stats.steps >= 2 and stats.steps < 12 and not stats.restarted, stats


def test_a_step_undecided_even_on_full_logits_reruns_the_search_exactly(screens, monkeypatch):
    m = random_model()
    ids, mask = inputs()
    kwargs = dict(SETTINGS["xlsum"], return_dict_in_generate=True, output_attentions=False)
    expected = exact_path(m, ids, mask, monkeypatch, **kwargs)
    monkeypatch.setattr(beam_screen, "MARGIN", 1.0)     # every score "uncertain" by more than the gaps
    out = m.generate(ids, mask, **kwargs)
    assert torch.equal(out.sequences, expected.sequences)
    assert torch.equal(out.beam_indices, expected.beam_indices)
    stats = screens[-1].stats
    assert stats.restarted and stats.full_rows == 1, stats       # the first step's lse was already too wide


def test_an_int8_head_decodes_beams_without_the_screen(screens, monkeypatch):
    """An int8 head's bf16 logits tie across beams too often for any bound: its beams take the full int8 head."""
    from model.quant import Int8Linear

    m = random_model()
    m.lm_head = Int8Linear.from_float(m.lm_head)
    ids, mask = inputs()
    expected = exact_path(m, ids, mask, monkeypatch, **SETTINGS["xlsum"])
    assert torch.equal(m.generate(ids, mask, **SETTINGS["xlsum"]), expected)
    assert screens == [None]


# ------------------------------------------------------------------------------------------------------------
# The pieces of the proof
# ------------------------------------------------------------------------------------------------------------
def test_the_screened_log_normaliser_interval_holds_the_exact_one():
    m = random_model(peak=1.0)
    needs_screen(m)
    screen = lm_head_screen(m)
    torch.manual_seed(3)
    h = torch.randn(6, SHAPE["d_model"]) * torch.tensor([0.05, 0.2, 1.0, 1.0, 3.0, 0.01])[:, None]
    with torch.no_grad():
        exact = log_normalizer(torch.nn.functional.linear(h, m.lm_head.weight))[:, 0]
        rc = screened_rows(screen, h, lambda s, rows: s, keep=8)
        full = full_rows(FastHead(m, screen=False), h, lambda s, rows: s, keep=8)
    assert rc is not None
    lse = (rc.shift + rc.log_sum)[:, 0]
    assert ((lse - exact).abs() <= rc.lam).all(), (lse - exact, rc.lam)
    # flat rows (small states) put mass outside the rescored tokens: their interval is wide, never wrong
    assert rc.lam[5] > rc.lam[4]
    assert torch.equal(rc.tokens, full.tokens) and torch.equal(rc.logits, full.logits)


def test_bounded_log_normaliser_counts_rescored_columns_once():
    raw = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    exact = torch.tensor([[2.5, 3.1]])
    shift, log_sum, lam = bounded_log_normalizer(raw, exact, torch.tensor([2, 3]), torch.tensor([0.5]))
    true_rest = torch.tensor([0.0, 1.0]).exp().sum()                 # the rest within e^+-0.5 of these
    centre = torch.log(true_rest + exact.exp().sum())
    assert torch.isclose((shift + log_sum)[0, 0], centre, atol=1e-6)
    hi = torch.log(true_rest * torch.exp(torch.tensor(0.5)) + exact.exp().sum())
    assert lam[0] >= hi - centre and lam[0] < hi - centre + 1e-4


def test_decided_order_checks_adjacent_pairs_and_the_cut():
    v = torch.tensor([[5.0, 4.0, 3.0, 1.0]])
    unc = torch.full((1, 4, 4), 0.5)
    live = torch.tensor([True])
    assert decided_order(v, unc, 2, live)
    assert not decided_order(torch.tensor([[5.0, 4.8, 3.0, 1.0]]), unc, 2, live)     # the order of the two kept
    assert not decided_order(torch.tensor([[5.0, 4.0, 3.8, 1.0]]), unc, 2, live)     # the cut
    assert decided_order(torch.tensor([[5.0, 4.0, 3.8, 3.7]]), unc, 1, live)         # beyond the cut: free
    assert decided_order(torch.tensor([[5.0, 4.8, 3.0, 1.0]]), unc, 2, torch.tensor([False]))   # frozen input
    placeholders = torch.tensor([[5.0, 4.0, -1e9, -1e9]])
    assert decided_order(placeholders, unc, 3, live) and REAL > -1e9
    pairs = unc.clone()
    pairs[0, 0, 1] = pairs[0, 1, 0] = 0.01                                          # two beams sharing a past
    assert decided_order(torch.tensor([[5.0, 4.9, 3.0, 1.0]]), pairs, 2, live)


def test_improvable_test_is_checked_against_both_uncertainties():
    best, finished = torch.tensor([-3.0]), torch.tensor([[-2.0, -3.05]])   # against the lowest: a gap of 0.05
    check = torch.tensor([True])
    tight, loose = 0.01, 0.1
    assert improvable_decided(best, torch.tensor([tight]), finished, torch.full((1, 2), tight), check)
    assert not improvable_decided(best, torch.tensor([loose]), finished, torch.full((1, 2), loose), check)
    assert not improvable_decided(best, torch.tensor([tight]), finished, torch.tensor([[0.01, 0.1]]), check)
    assert improvable_decided(best, torch.tensor([loose]), finished, torch.full((1, 2), loose), ~check)
    # clearly below every finished score: decided the other way
    assert improvable_decided(torch.tensor([-9.0]), torch.tensor([loose]), finished, torch.full((1, 2), loose), check)


def test_only_the_cuts_are_decided_where_the_order_changes_no_token():
    v = torch.tensor([[5.0, 4.0, 3.9, 1.0, 0.0]])
    unc = torch.full((1, 5, 5), 0.5)
    live = torch.tensor([True])
    assert not decided_order(v, unc, 3, live)                 # 4.0 and 3.9: their order is not decided
    assert decided_order(v, unc, 3, live, cuts=(1,))          # ... and not needed: cuts after 1 and 3
    assert not decided_order(v, unc, 3, live, cuts=(2,))      # a cut between them is


def test_generation_module_reexports_log_normalizer():
    assert generation.log_normalizer is log_normalizer
