"""Explanations (issue 26, part 1): `model.explain` on tiny random mT5, UMT5 and T5 checkpoints.

- Gradient x input, saliency, integrated gradients (Gauss-Legendre and a Riemann rule, zero and token baselines,
  with the convergence delta) and the contrastive attribution equal Captum's on transformers 4.57's model with
  the same weights, attributing log p(target token) to `inputs_embeds` and `decoder_inputs_embeds`
  (tests/reference/ref_explain.py), left-padded rows included.
- Value zeroing equals inseq's (`value_zeroing`, attribute_target=True) per layer, and a slow implementation here
  that zeroes one token at a time with hooks on the real layers; a counted run shows its corrupted passes go
  through each layer as one batch.
- ALTI+ equals a slow, direct implementation of the paper's equations written here (per token pair, per head,
  from the weight matrices, rolled out with block matrices), and keeps its promises: each output row sums to 1,
  a masked-out source token contributes exactly 0, and the decomposition reproduces the layers' outputs.
- Confidence, the contrastive scores and the integrated-gradients delta against direct forward passes; the
  zero baseline's slow convergence on T5 models and a token baseline's fast one; bad input refused with a
  message; `python -m model explain` writes a row of scores per input line.
"""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import model
from model import explain
from model.__main__ import main as cli_main
from model.modeling import shift_right
from model.tiny import tiny_model, train_sentencepiece, write_checkpoint, write_mt5_style
from refutil import run_reference

sys.path.insert(0, str(Path(__file__).parent / "reference"))
from spm_util import SENTENCES  # noqa: E402

ATOL = 1e-4   # the tolerance against Captum and inseq
SMALL = dict(d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2, num_decoder_layers=3,
             relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.1)
FAMILIES = {   # family: extra config; t5 is the original T5's layout (relu, tied: logits scaled by d_model**-0.5)
    "mt5": dict(tie_word_embeddings=False),
    "umt5": dict(tie_word_embeddings=False),
    "t5": dict(feed_forward_proj="relu", tie_word_embeddings=True),
}
SOURCE = "The quick brown fox jumps over the lazy dog."
TARGET = "Der Hund bellt laut."
PAD_LEFT = 2   # the Captum rows are left-padded with this many masked pad tokens
# Value zeroing against inseq on a short source: a random model spreads its attention evenly, so zeroing one of n
# tokens moves a layer's output by a cosine distance ~1/n^2 (~3e-5 for the 33 tokens of SOURCE), and inseq's fp32
# cosine (noise ~1e-7), divided by a row's sum (~0.003), differed from ours by up to 8e-5. 11 tokens: ~3x margin.
VZ_SOURCE = "Hello world!"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and two threads on a shared 2-core machine wait on each other
    (this file took ~4x longer); the setting is given back after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = write_mt5_style(tmp_path_factory.mktemp("tok"), train_sentencepiece(SENTENCES, 800, False),
                             n_sentinels=4)
    return model.MT5Tokenizer.from_pretrained(str(folder)), folder


@pytest.fixture(scope="module")
def checkpoints(tokenizer, tmp_path_factory):
    """{family: (model, checkpoint dir)}; dropout on and the model left in training mode: the methods turn it off."""
    tok, folder = tokenizer
    root = tmp_path_factory.mktemp("explain")
    out = {}
    for seed, (family, extra) in enumerate(FAMILIES.items()):
        m = tiny_model(family, "generation", len(tok), seed=seed, **SMALL, **extra)
        write_checkpoint(root / family, m, folder)
        out[family] = (m.train(), root / family)
    return out


def row(tok, pad: int = 0):
    """(input_ids, attention_mask, target_ids), each (1, n); `pad` masked pad tokens in front of the source."""
    ids = torch.tensor([[0] * pad + tok.encode(SOURCE)])
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    return ids, mask, torch.tensor([tok.encode(TARGET)])


def positions_for(target: torch.Tensor) -> list[int]:
    return [0, 3, target.shape[1] - 1]


# Captum's default (zero baseline, Gauss-Legendre), a Riemann rule (not one that evaluates alpha = 0: the zero
# embedding's gradient is ~1e15 there, see explain.integrated_gradients) and <unk>'s embedding as the baseline
IG_CASES = [{"steps": 8, "method": "gausslegendre"}, {"steps": 5, "method": "riemann_right"},
            {"steps": 6, "method": "gausslegendre", "baseline_token": 2}]


@pytest.fixture(scope="module")
def reference(tokenizer, checkpoints, tmp_path_factory):
    """Captum (and, for mT5 and UMT5, inseq) on transformers' model loaded from each checkpoint."""
    tok, _ = tokenizer
    root = tmp_path_factory.mktemp("ref")
    cases = []
    for family, (_, folder) in checkpoints.items():
        ids, mask, target = row(tok, PAD_LEFT)
        save_file({"input_ids": ids, "attention_mask": mask, "target_ids": target}, root / f"{family}.in")
        case = dict(name=family, family=family, dir=str(folder), inputs=str(root / f"{family}.in"),
                    out=str(root / f"{family}.out"), positions=positions_for(target), ig=IG_CASES,
                    contrast={"position": 2, "alternative": tok.encode("Katze", add_special_tokens=False)[0]})
        if family != "t5":
            case["inseq"] = {"source": VZ_SOURCE, "target": TARGET}
        cases.append(case)
    (root / "jobs.json").write_text(json.dumps({"cases": cases}))
    run_reference("ref_explain.py", root / "jobs.json")
    return {c["name"]: load_file(c["out"]) for c in cases}


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str, atol: float = ATOL) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= atol, f"{what} differs by {diff:.2e}"


# ------------------------------------------------------------------------------------------------------------
# Parity with Captum and inseq
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_methods_equal_captum(family, tokenizer, checkpoints, reference):
    tok, _ = tokenizer
    m = checkpoints[family][0]
    ids, mask, target = row(tok, PAD_LEFT)
    pos = positions_for(target)
    ref = reference[family]
    gxi = explain.gradient_x_input(m, ids, mask, target, positions=pos)
    # Captum returns embedding-level scores: ours are their sum (gradient x input) or norm (saliency)
    assert_close(gxi.source, ref["gxi.source"].sum(-1), f"{family} gradient x input, source")
    assert_close(gxi.prefix, ref["gxi.prefix"].sum(-1), f"{family} gradient x input, prefix")
    sal = explain.saliency(m, ids, mask, target, positions=pos)
    assert_close(sal.source, ref["saliency.source"].norm(dim=-1), f"{family} saliency, source")
    assert_close(sal.prefix, ref["saliency.prefix"].norm(dim=-1), f"{family} saliency, prefix")
    assert (gxi.source[:, :PAD_LEFT] == 0).all() and (sal.source[:, :PAD_LEFT] == 0).all()
    assert gxi.positions.tolist() == pos and m.training   # the model's mode is given back


@pytest.mark.parametrize("family", FAMILIES)
def test_integrated_gradients_equal_captum(family, tokenizer, checkpoints, reference):
    tok, _ = tokenizer
    m = checkpoints[family][0]
    ids, mask, target = row(tok, PAD_LEFT)
    for k, case in enumerate(IG_CASES):
        ig = explain.integrated_gradients(m, ids, mask, target, positions=positions_for(target),
                                          batch_size=3, **case)
        what = f"{family} integrated gradients {case}"
        assert_close(ig.source, reference[family][f"ig{k}.source"].sum(-1), what + ", source")
        assert_close(ig.prefix, reference[family][f"ig{k}.prefix"].sum(-1), what + ", prefix")
        assert_close(ig.delta, reference[family][f"ig{k}.delta"], what + ", delta")


@pytest.mark.parametrize("family", FAMILIES)
def test_contrastive_attribution_equals_captum(family, tokenizer, checkpoints, reference):
    tok, _ = tokenizer
    m = checkpoints[family][0]
    ids, mask, target = row(tok, PAD_LEFT)
    c = explain.contrastive(m, ids, mask, target, 2, "Katze", tok)
    assert c.mode == "first_token" and c.alternative_ids == tok.encode("Katze", add_special_tokens=False)[:1]
    assert_close(c.source, reference[family]["contrast.source"].sum(-1), f"{family} contrastive, source")
    assert_close(c.prefix, reference[family]["contrast.prefix"].sum(-1), f"{family} contrastive, prefix")


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_value_zeroing_equals_inseq(family, tokenizer, checkpoints, reference):
    tok, _ = tokenizer
    m = checkpoints[family][0]
    ids, target = torch.tensor([tok.encode(VZ_SOURCE)]), torch.tensor([tok.encode(TARGET)])
    ref = reference[family]
    # inseq tokenized the same texts itself; its target starts with the decoder start token
    assert ref["vz.source_ids"].tolist() == ids[0].tolist()
    assert ref["vz.target_ids"].tolist() == [0] + target[0].tolist()
    vz = explain.value_zeroing(m, ids, None, target)
    # inseq: (attributed token, generated position, layer); its prefix rows cover the full target (one more than
    # the decoder inputs), with NaN where a token is not yet seen
    assert_close(vz.source_layers, ref["vz.source"].permute(2, 1, 0), f"{family} value zeroing, source")
    inseq_prefix = ref["vz.prefix"].permute(2, 1, 0)[:, :, : target.shape[1]]
    assert torch.isnan(inseq_prefix).equal(vz.prefix_layers.new_ones(inseq_prefix.shape).triu(1).bool())
    assert_close(vz.prefix_layers, inseq_prefix.nan_to_num(0.0), f"{family} value zeroing, prefix")


# ------------------------------------------------------------------------------------------------------------
# Value zeroing: slow per-token implementation, batching
# ------------------------------------------------------------------------------------------------------------
def slow_value_zeroing(m, ids, mask, target):
    """One corrupted run of each real decoder layer per (layer, token), on the clean pass's own inputs to it: a
    hook zeroes token j's value vectors in the attention, and the distances are taken in fp64."""
    dec_in = shift_right(target, 0, 0)
    calls = {}
    hooks = [b.register_forward_pre_hook(lambda mod, args, i=i: calls.__setitem__(i, args))
             for i, b in enumerate(m.decoder.block)]
    with torch.no_grad(), explain.evaluating(m):
        _, dec, _ = m.run(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in, use_cache=False,
                          output_hidden_states=True)
    for h in hooks:
        h.remove()
    layers, length, num_source = len(m.decoder.block), target.shape[1], ids.shape[1]
    source, prefix = torch.zeros(layers, length, num_source), torch.zeros(layers, length, length)
    for layer, block in enumerate(m.decoder.block):
        clean = dec.hidden_states[layer + 1][0].double()
        for attn, keys, out in ((block.layer[1].EncDecAttention, num_source, source),
                                (block.layer[0].SelfAttention, length, prefix)):
            for j in range(keys):
                def zero(mod, args, j=j):   # Attention.forward(x, k, v, bias, ...): v (B, H, S, K)
                    v = args[2].clone()
                    v[:, :, j] = 0
                    return (*args[:2], v, *args[3:])
                handle = attn.register_forward_pre_hook(zero)
                with torch.no_grad(), explain.evaluating(m):
                    h = block(*calls[layer])[0]
                    if layer == layers - 1:
                        h = m.decoder.final_layer_norm(h)
                handle.remove()
                out[layer, :, j] = (1 - F.cosine_similarity(h[0].double(), clean, dim=-1)).float()
    prefix = prefix.tril()   # inseq's causal mask: a token's own and later positions only
    return explain.normalized(source), explain.normalized(prefix)


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_value_zeroing_equals_slow_per_token_runs(family, tokenizer, checkpoints):
    tok, _ = tokenizer
    m = checkpoints[family][0]
    ids, mask, target = row(tok, PAD_LEFT)
    source, prefix = slow_value_zeroing(m, ids, mask, target)
    vz = explain.value_zeroing(m, ids, mask, target, chunk=37)   # odd chunks: several batches per layer
    assert_close(vz.source_layers, source, f"{family} value zeroing, source", 1e-5)
    assert_close(vz.prefix_layers, prefix, f"{family} value zeroing, prefix", 1e-5)
    assert (vz.source_layers[:, :, :PAD_LEFT] == 0).all()
    assert torch.equal(vz.source, vz.source_layers.mean(0)) and torch.equal(vz.prefix, vz.prefix_layers.mean(0))
    rows = vz.source_layers.sum(-1)
    assert torch.allclose(rows[rows > 0], torch.ones(()))


def test_value_zeroing_runs_its_corrupted_passes_as_one_batch(tokenizer, checkpoints):
    """The n corrupted passes are not n forwards: per decoder layer, the feed-forward runs once for all source
    tokens and once for all prefix tokens (plus once in the clean pass), and the encoder runs once."""
    tok, _ = tokenizer
    m = checkpoints["mt5"][0]
    ids, mask, target = row(tok, PAD_LEFT)
    feed_forward, encoder = [], []
    hooks = [b.layer[-1].register_forward_hook(lambda mod, args, out, i=i: feed_forward.append((i, args[0].shape)))
             for i, b in enumerate(m.decoder.block)]
    hooks.append(m.encoder.register_forward_hook(lambda *a: encoder.append(1)))
    try:
        explain.value_zeroing(m, ids, mask, target)
    finally:
        for h in hooks:
            h.remove()
    live, length, dim = int(mask.sum()), target.shape[1], m.config.d_model
    assert len(encoder) == 1
    for layer in range(len(m.decoder.block)):
        shapes = [shape for i, shape in feed_forward if i == layer]
        # the clean pass; every (unmasked source token, position) pair; every prefix pair with j <= i
        assert shapes == [(1, length, dim), (1, live * length, dim), (1, length * (length + 1) // 2, dim)]


# ------------------------------------------------------------------------------------------------------------
# ALTI+
# ------------------------------------------------------------------------------------------------------------
def rms_norm(norm, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()


def slow_alti_plus(m, ids, mask, target):
    """ALTI+ from scratch: encoder rollout R = C_L ... C_1; the decoder as one (S + T)-token system whose layer
    matrix keeps the encoder outputs' rows [R, 0] and mixes each output position from the encoder outputs (the
    cross-attention's contributions) and from the prefix (the self-attention's, scaled by the cross-attention's
    residual share)."""
    dec_in = shift_right(target, 0, 0)
    with torch.no_grad(), explain.evaluating(m):
        out = m(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in, output_attentions=True,
                output_hidden_states=True, use_cache=False)
    S, T = ids.shape[1], target.shape[1]
    rollout = torch.eye(S, dtype=torch.float64)
    for layer, block in enumerate(m.encoder.block):
        sa = block.layer[0]
        x = out.encoder_hidden_states[layer][0].double()
        c = slow_contributions(sa.SelfAttention, out.encoder_attentions[layer][0].double(), x,
                               rms_norm(sa.layer_norm, x), True)[0]
        rollout = c @ rollout
    encoder_out = out.encoder_last_hidden_state[0].double()
    state = torch.zeros(S + T, S + T, dtype=torch.float64)
    state[:S, :S], state[S:, S:] = rollout, torch.eye(T)
    for layer, block in enumerate(m.decoder.block):
        sa, ca = block.layer[0], block.layer[1]
        x = out.decoder_hidden_states[layer][0].double()
        c_self, after_self = slow_contributions(sa.SelfAttention, out.decoder_attentions[layer][0].double(), x,
                                                rms_norm(sa.layer_norm, x), True)
        c_cross, _ = slow_contributions(ca.EncDecAttention, out.cross_attentions[layer][0].double(), after_self,
                                        encoder_out, False)
        step = torch.eye(S + T, dtype=torch.float64)
        step[S:, :S] = c_cross[:, :S]
        step[S:, S:] = c_cross[:, S:] * c_self
        state = step @ state
    return state[S:, :S].float(), state[S:, S:].float()


def slow_contributions(attn, weights, residual, kv, self_attention: bool):
    """The paper's per-layer contributions, one (query, key) pair and one head at a time, from the weight
    matrices: T_i(x_j) = sum_h A_h[i, j] W_O^h W_V^h kv_j (+ x_i when j = i, self-attention), the cross-attention's
    residual x_i as one more vector; y_i = sum_j T_i(x_j); c_ij = max(0, |y_i|_1 - |y_i - T_i(x_j)|_1), normalized.
    Returns the contributions and the sub-layer outputs y (Q, D)."""
    k = attn.d_kv
    wv, wo = attn.v.weight.double(), attn.o.weight.double()
    rows, outputs = [], []
    for i in range(weights.shape[1]):
        vectors = []
        for j in range(weights.shape[2]):
            t = sum(weights[h, i, j] * (wo[:, h * k:(h + 1) * k] @ (wv[h * k:(h + 1) * k] @ kv[j]))
                    for h in range(attn.num_heads))
            vectors.append(t + residual[i] if self_attention and i == j else t)
        if not self_attention:
            vectors.append(residual[i])
        y = sum(vectors)
        c = torch.stack([(y.abs().sum() - (y - t).abs().sum()).clamp_min(0) for t in vectors])
        rows.append(c / c.sum())
        outputs.append(y)
    return torch.stack(rows), torch.stack(outputs)


@pytest.mark.parametrize("family", FAMILIES)
def test_alti_plus_equals_a_direct_implementation_of_the_paper(family, tokenizer, checkpoints):
    tok, _ = tokenizer
    m = checkpoints[family][0]
    ids, mask, target = row(tok, PAD_LEFT)
    source, prefix = slow_alti_plus(m, ids, mask, target)
    alti = explain.alti_plus(m, ids, mask, target)
    assert_close(alti.source, source, f"{family} ALTI+, source", 1e-5)
    assert_close(alti.prefix, prefix, f"{family} ALTI+, prefix", 1e-5)


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_alti_plus_properties(family, tokenizer, checkpoints):
    tok, _ = tokenizer
    m = checkpoints[family][0]
    ids, mask, target = row(tok, PAD_LEFT)
    mask[0, 5] = 0                                  # a token masked out in the middle as well
    alti = explain.alti_plus(m, ids, mask, target)
    assert alti.source.dtype == torch.float32 and alti.source.shape == (target.shape[1], ids.shape[1])
    assert torch.allclose(alti.source.sum(-1) + alti.prefix.sum(-1), torch.ones(()), atol=1e-6)
    assert (alti.source[:, mask[0] == 0] == 0).all(), "a masked-out source token contributed"
    assert (alti.prefix.triu(1) == 0).all() and (alti.source > 0).any()
    assert torch.equal(alti.source_share, alti.source.sum(-1))


def test_the_decomposition_reproduces_the_layers(tokenizer, checkpoints):
    """ALTI's vectors add up to each attention sub-layer's real output: with the feed-forward on top they give
    the model's own hidden states, layer by layer, in both stacks."""
    tok, _ = tokenizer
    m = checkpoints["umt5"][0]
    ids, mask, target = row(tok, PAD_LEFT)
    r = explain.prepare(m, ids, mask, target)
    with torch.no_grad(), explain.evaluating(m):
        t = explain.trace(m, r)
        enc, dec, _ = m.run(input_ids=ids, attention_mask=mask, decoder_input_ids=r.decoder_input_ids,
                            use_cache=False, output_hidden_states=True)
        for name, stack, mixings, states in (("encoder", m.encoder, t.encoder, enc.hidden_states),
                                             ("decoder", m.decoder, t.decoder_cross, dec.hidden_states)):
            for layer, block in enumerate(stack.block):
                h = block.layer[-1](mixings[layer].output[None])
                if layer == len(stack.block) - 1:
                    h = stack.final_layer_norm(h)
                assert_close(h[0], states[layer + 1][0], f"{name} layer {layer}", 1e-5)


# ------------------------------------------------------------------------------------------------------------
# Direct checks: contrastive scores, confidence, integrated gradients' delta, positions, generation
# ------------------------------------------------------------------------------------------------------------
def logprobs(m, ids, mask, decoder_inputs):
    with torch.no_grad(), explain.evaluating(m):
        return m(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_inputs).logits[0].log_softmax(-1)


def test_contrastive_scores_are_the_log_probability_differences(tokenizer, checkpoints):
    tok, _ = tokenizer
    m = checkpoints["mt5"][0]
    ids, mask, target = row(tok)
    dec_in = shift_right(target, 0, 0)
    lp = logprobs(m, ids, mask, dec_in)
    first = explain.contrastive(m, ids, mask, target, 3, " Hund ", tok)
    alt = tok.encode("Hund", add_special_tokens=False)
    assert first.produced_ids == [int(target[0, 3])] and first.alternative_ids == alt[:1]
    assert first.difference == pytest.approx(float(lp[3, target[0, 3]] - lp[3, alt[0]]), abs=1e-5)
    # continuation: the produced word's tokens against all of the alternative's, each after its own prefix
    cont = explain.contrastive(m, ids, mask, target, 1, "Hund", tok, mode="continuation")
    pieces = tok.convert_ids_to_tokens(target[0].tolist())
    end = next(k for k in range(2, len(pieces)) if pieces[k].startswith("\u2581"))
    assert cont.produced_ids == target[0, 1:end].tolist() and cont.alternative_ids == alt
    produced = sum(float(lp[k, target[0, k]]) for k in range(1, end))
    alt_lp = logprobs(m, ids, mask, torch.cat([dec_in[:, :2], torch.tensor([alt[:-1]])], 1))
    alternative = sum(float(alt_lp[1 + k, a]) for k, a in enumerate(alt))
    assert cont.produced_logprob == pytest.approx(produced, abs=1e-4)
    assert cont.alternative_logprob == pytest.approx(alternative, abs=1e-4)
    assert (cont.prefix[2:] == 0).all() and cont.source.shape == (ids.shape[1],)


def test_confidence_is_the_next_token_distribution(tokenizer, checkpoints):
    tok, _ = tokenizer
    m = checkpoints["umt5"][0]
    ids, mask, target = row(tok)
    conf = explain.token_confidence(m, ids, mask, target)
    lp = logprobs(m, ids, mask, shift_right(target, 0, 0))
    chosen = lp[torch.arange(target.shape[1]), target[0]]
    assert torch.allclose(conf.logprob, chosen, atol=1e-5) and torch.allclose(conf.probability, chosen.exp())
    assert torch.allclose(conf.entropy, -(lp.exp() * lp).sum(-1), atol=1e-4)


def test_integrated_gradients_delta_is_measured_against_the_zero_baseline(tokenizer, checkpoints):
    tok, _ = tokenizer
    m = checkpoints["mt5"][0]
    ids, mask, target = row(tok)
    ig = explain.integrated_gradients(m, ids, mask, target, positions=[2], steps=6)
    with torch.no_grad(), explain.evaluating(m):
        dim = m.config.d_model
        zero = m(inputs_embeds=torch.zeros(1, ids.shape[1], dim), attention_mask=mask,
                 decoder_inputs_embeds=torch.zeros(1, target.shape[1], dim)).logits[0, 2].log_softmax(-1)
    at_input = logprobs(m, ids, mask, shift_right(target, 0, 0))[2, target[0, 2]]
    total = ig.source.sum() + ig.prefix.sum()
    assert float(ig.delta[0]) == pytest.approx(float(total - (at_input - zero[target[0, 2]])), abs=1e-4)
    assert float(ig.score[0]) == pytest.approx(float(at_input), abs=1e-5)


def test_a_token_baseline_lets_the_path_integral_converge(tokenizer, checkpoints):
    """From zero embeddings T5's first norm swings the output within alpha ~1e-3 of the start: the delta stays large
    at 64 steps. From <unk>'s embedding the delta falls towards 0 as the steps grow."""
    tok, _ = tokenizer
    m = checkpoints["umt5"][0]
    ids, mask, target = row(tok)

    def delta(steps, baseline_token=None):
        ig = explain.integrated_gradients(m, ids, mask, target, positions=[1, 4], steps=steps,
                                          baseline_token=baseline_token, batch_size=64)
        return ig.delta.abs().max().item()
    assert delta(64) > 0.1
    assert delta(64, 2) < 1e-3 < delta(8, 2)


def test_positions_select_rows_and_the_future_scores_zero(tokenizer, checkpoints):
    tok, _ = tokenizer
    m = checkpoints["umt5"][0]
    ids, mask, target = row(tok)
    full = explain.gradient_x_input(m, ids, mask, target)
    some = explain.gradient_x_input(m, ids, mask, target, positions=[4, 1])
    assert torch.allclose(some.source, full.source[[4, 1]], atol=1e-6)
    assert torch.allclose(some.prefix, full.prefix[[4, 1]], atol=1e-6)
    assert (full.prefix.triu(1) == 0).all() and (full.prefix.diagonal() != 0).all()
    assert full.as_dict()["positions"] == list(range(target.shape[1]))


def test_without_a_target_the_model_s_own_output_is_explained(tokenizer, checkpoints):
    tok, _ = tokenizer
    m = checkpoints["mt5"][0]
    ids, mask, _ = row(tok)
    with explain.evaluating(m):
        generated = m.generate(ids, mask, max_new_tokens=20)[0, 1:]
    conf = explain.token_confidence(m, ids, mask, None)
    expected = generated[: (generated == 1).nonzero()[0, 0] + 1] if (generated == 1).any() else generated
    assert conf.target_ids.tolist() == expected.tolist()


# ------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------
def test_bad_input_gets_a_clear_message(tokenizer, checkpoints):
    tok, _ = tokenizer
    m = checkpoints["mt5"][0]
    ids, mask, target = row(tok)
    length = target.shape[1]
    with pytest.raises(ValueError, match="alternative is empty"):
        explain.contrastive(m, ids, mask, target, 0, "   ", tok)
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        explain.contrastive(m, ids, mask, target, 0, "\u200b", tok)
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        explain.contrastive(m, ids, mask, target, 0, "<pad>", tok)
    with pytest.raises(ValueError, match=f"target position {length} is out of range: the output has {length}"):
        explain.contrastive(m, ids, mask, target, length, "Hund", tok)
    with pytest.raises(ValueError, match="target position -1 is out of range"):
        explain.saliency(m, ids, mask, target, positions=[0, -1])
    with pytest.raises(ValueError, match=f"{explain.MAX_IG_STEPS + 1} steps is over the limit of "
                                         f"{explain.MAX_IG_STEPS}"):
        explain.integrated_gradients(m, ids, mask, target, steps=explain.MAX_IG_STEPS + 1)
    with pytest.raises(ValueError, match="50 steps is over the limit of 32"):
        explain.integrated_gradients(m, ids, mask, target, steps=50, max_steps=32)
    with pytest.raises(ValueError, match="riemann_left needs at least 2 steps"):
        explain.integrated_gradients(m, ids, mask, target, steps=1, method="riemann_left")
    with pytest.raises(ValueError, match="unknown integration method"):
        explain.integrated_gradients(m, ids, mask, target, method="simpson")
    with pytest.raises(ValueError, match="one row at a time"):
        explain.alti_plus(m, ids.repeat(2, 1), mask.repeat(2, 1), target)
    with pytest.raises(ValueError, match="unknown contrast mode"):
        explain.contrastive(m, ids, mask, target, 0, "Hund", tok, mode="whole")
    with pytest.raises(ValueError, match="target_ids is empty"):
        explain.value_zeroing(m, ids, mask, torch.zeros(1, 0, dtype=torch.long))


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------
def test_cli_writes_scores_per_row(tokenizer, checkpoints, tmp_path):
    tok, _ = tokenizer
    folder = checkpoints["mt5"][1]
    source = tmp_path / "in.txt"
    # a plain line (its output is generated) and a line as `generate --jsonl` writes them (its output is given)
    source.write_text(SOURCE + "\n" + json.dumps({"input": "Hello world!", "output": TARGET}) + "\n")
    records = {}
    for method, extra in (("alti_plus", []), ("integrated_gradients", ["--steps", "4", "--positions", "0,1",
                                                               "--baseline-token", "2"]),
                          ("contrastive", ["--position", "1", "--alternative", "Hund"]), ("confidence", [])):
        out = tmp_path / f"{method}.jsonl"
        assert cli_main(["explain", "--model", str(folder), "--input", str(source), "--method", method,
                         "--output", str(out), "--max-new-tokens", "6", *extra]) == 0
        records[method] = [json.loads(line) for line in out.read_text().splitlines()]
    alti = records["alti_plus"]
    assert [r["input"] for r in alti] == [SOURCE, "Hello world!"] and alti[1]["output"] == TARGET
    assert alti[1]["target_tokens"] == tok.convert_ids_to_tokens(tok.encode(TARGET))
    assert len(alti[1]["source"]) == len(alti[1]["target_tokens"])
    assert len(alti[1]["source"][0]) == len(alti[1]["source_tokens"]) == len(tok.encode("Hello world!"))
    assert len(alti[0]["target_tokens"]) <= 6
    ig = records["integrated_gradients"][1]
    assert ig["positions"] == [0, 1] and len(ig["delta"]) == 2
    contrast = records["contrastive"][1]
    assert contrast["alternative_tokens"] == tok.convert_ids_to_tokens(tok.encode("Hund", add_special_tokens=False))[:1]
    assert contrast["difference"] == pytest.approx(contrast["produced_logprob"] - contrast["alternative_logprob"])
    assert len(records["confidence"][1]["probability"]) == len(tok.encode(TARGET))


def test_cli_reports_a_bad_row_and_goes_on(checkpoints, tmp_path):
    folder = checkpoints["mt5"][1]
    source = tmp_path / "in.txt"
    source.write_text("short\n\n" + json.dumps({"input": "again"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert cli_main(["explain", "--model", str(folder), "--input", str(source), "--method", "contrastive",
                     "--position", "40", "--alternative", "Hund", "--output", str(out),
                     "--max-new-tokens", "3"]) == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all("out of range" in r["error"] for r in (records[0], records[2]))
    assert "empty" in records[1]["error"]
