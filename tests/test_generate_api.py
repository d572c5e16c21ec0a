"""generate()'s transformers API (issue 12): with return_dict_in_generate, the dict outputs of transformers 4.57
(GenerateEncoderDecoderOutput / GenerateBeamEncoderDecoderOutput: field names and order, per-step shapes, values
within 1e-5, tokens equal) for greedy, sampling with a fixed seed, beam search and beam sampling, mT5 and UMT5,
tied and untied; use_cache=False, remove_invalid_values, encoder_outputs / inputs_embeds without input_ids,
continuing from decoder_input_ids; nothing extra computed when nothing extra is asked for."""
import dataclasses
import json
import random

import pytest
import torch

from model import MT5Config, MT5ForConditionalGeneration, UMT5Config, UMT5ForConditionalGeneration
from model import generation
from model.generation import GenerateBeamEncoderDecoderOutput, GenerateEncoderDecoderOutput
from refutil import run_reference

VOCAB, EOS = 120, 1
TINY = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=3)
MODELS = {"mt5-untied": ("mt5", False), "mt5-tied": ("mt5", True), "umt5-tied": ("umt5", True),
          "umt5-untied": ("umt5", False)}
ALL = dict(output_scores=True, output_logits=True, output_attentions=True, output_hidden_states=True)
# name -> (generate kwargs, extra case fields: source, decoder_input_ids, seed)
CASES = {
    "greedy": (dict(max_new_tokens=8, **ALL), {}),
    "greedy-nocache": (dict(max_new_tokens=6, use_cache=False, **ALL), {}),
    "greedy-plain-dict": (dict(max_new_tokens=6), {}),
    "greedy-bans-inf": (dict(max_new_tokens=7, min_new_tokens=4, no_repeat_ngram_size=2, remove_invalid_values=True,
                             output_scores=True), {}),
    "sample": (dict(max_new_tokens=8, do_sample=True, top_k=20, temperature=0.8, num_return_sequences=2, **ALL),
               {"seed": 11}),
    "sample-top-p": (dict(max_new_tokens=8, do_sample=True, top_k=0, top_p=0.7, output_scores=True), {"seed": 3}),
    "beam": (dict(max_new_tokens=7, num_beams=3, num_return_sequences=2, length_penalty=0.8, **ALL), {}),
    "beam-plain-dict": (dict(max_new_tokens=6, num_beams=2), {}),
    "beam-nocache": (dict(max_new_tokens=5, num_beams=2, use_cache=False, **ALL), {}),
    "beam-bans-inf": (dict(max_new_tokens=6, num_beams=2, min_new_tokens=3, remove_invalid_values=True,
                           output_scores=True), {}),
    "beam-sample": (dict(max_new_tokens=7, num_beams=3, do_sample=True, top_k=30, **ALL), {"seed": 5}),
    "greedy-prefix": (dict(max_new_tokens=6, **ALL), {"decoder_input_ids": [[0, 5, 9], [0, 7, 3], [0, 4, 4]]}),
    "greedy-prefix-no-start": (dict(max_length=9, output_scores=True), {"decoder_input_ids": [[5, 9], [7, 3], [4, 4]]}),
    "beam-prefix": (dict(max_new_tokens=5, num_beams=2, length_penalty=1.5, **ALL),
                    {"decoder_input_ids": [[8, 6, 2], [5, 5, 9], [3, 10, 11]]}),
    "beam-prefix-never": (dict(max_new_tokens=5, num_beams=3, early_stopping="never", output_scores=True),
                          {"decoder_input_ids": [[0, 8], [0, 5], [0, 3]]}),
    "embeds-greedy": (dict(max_new_tokens=6, **ALL), {"source": "inputs_embeds"}),
    "embeds-beam": (dict(max_new_tokens=5, num_beams=2, output_scores=True), {"source": "inputs_embeds"}),
    "encoder-outputs-greedy": (dict(max_new_tokens=6, **ALL), {"source": "encoder_outputs"}),
    "encoder-outputs-beam": (dict(max_new_tokens=5, num_beams=3, **ALL), {"source": "encoder_outputs"}),
    "no-mask-greedy": (dict(max_new_tokens=6, output_scores=True, output_attentions=True),
                       {"source": "input_ids_nomask"}),
}


def tiny(family: str, tied: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg_cls, cls = (UMT5Config, UMT5ForConditionalGeneration) if family == "umt5" else (
        MT5Config, MT5ForConditionalGeneration)
    return cls(cfg_cls(**TINY, tie_word_embeddings=tied)).eval()


def inputs():
    """Three eos-terminated rows of different lengths, right-padded."""
    rng = random.Random(4)
    lengths = [9, 5, 7]
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.tensor([rng.randint(3, VOCAB - 1) for _ in range(n - 1)] + [EOS])
        mask[i, :n] = 1
    return ids, mask


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-api")
    ids, mask = inputs()
    models, cases = {}, []
    for name, (family, tied) in MODELS.items():
        models[name] = m = tiny(family, tied)
        m.save_pretrained(root / name)
        for case, (kwargs, extra) in CASES.items():
            cases.append(dict(name=f"{name}/{case}", dir=str(root / name), family=family, input_ids=ids.tolist(),
                              attention_mask=mask.tolist(), kwargs=kwargs, **extra))
    (root / "jobs.json").write_text(json.dumps({"cases": cases}))
    run_reference("ref_generate_api.py", root / "jobs.json", root / "out.pt", timeout=600)
    return models, torch.load(root / "out.pt", weights_only=True)


def ours(m, case):
    kwargs, extra = CASES[case]
    ids, mask = inputs()
    call = dict(kwargs, return_dict_in_generate=True)
    if "decoder_input_ids" in extra:
        call["decoder_input_ids"] = torch.tensor(extra["decoder_input_ids"])
    if "seed" in extra:
        call["generator"] = torch.Generator().manual_seed(extra["seed"])
    source = extra.get("source", "input_ids")
    if source == "input_ids":
        return m.generate(ids, mask, **call)
    if source == "input_ids_nomask":
        return m.generate(ids, **call)
    if source == "inputs_embeds":
        return m.generate(inputs_embeds=m.shared(ids).detach(), attention_mask=mask, **call)
    return m.generate(encoder_outputs=m.encode(ids, mask), attention_mask=mask, **call)


def assert_same(a, b, where: str):
    """Tensors (shape, dtype, values; integers exactly), nested tuples, None."""
    if b is None or a is None:
        assert a is None and b is None, f"{where}: {type(a).__name__} vs {type(b).__name__}"
        return
    if isinstance(b, tuple):
        assert isinstance(a, tuple) and len(a) == len(b), f"{where}: {len(a)} entries vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
        return
    assert a.shape == b.shape, f"{where}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} vs {b.dtype}"
    # 1e-5, or a few float32 ulps where |value| > 10 (scores of a sharpened distribution reach ~40)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6, msg=lambda m: f"{where}: {m}")


def our_cache(cache):
    """Our KVCache as transformers' legacy tuples: per layer (self k, self v, cross k, cross v)."""
    if cache is None:
        return None
    return tuple((cache.self_k[i][:, :, :n], cache.self_v[i][:, :, :n], cache.cross_k[i], cache.cross_v[i])
                 for i, n in enumerate(cache.lengths))


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_dict_output_equals_transformers(reference, model_name, case):
    models, ref = reference
    expected = ref[f"{model_name}/{case}"]
    out = ours(models[model_name], case)
    assert type(out).__name__ == expected["class"]
    assert [f.name for f in dataclasses.fields(out)] == expected["fields"]
    assert out.keys() == expected["keys"]
    for name, value in expected["values"].items():
        assert_same(getattr(out, name), value, name)
    assert_same(our_cache(out.past_key_values), expected["cache"], "past_key_values")


def test_per_step_shapes():
    """transformers' layout, checked by hand on one run: per-step tuples of per-layer tensors."""
    m = tiny("mt5", False)
    ids, mask = inputs()
    out = m.generate(ids, mask, max_new_tokens=4, min_new_tokens=4, return_dict_in_generate=True,
                     decoder_input_ids=torch.tensor([[0, 5]] * 3), **ALL)
    n, h, s, d, layers = 3, 3, ids.shape[1], 32, 2
    assert isinstance(out, GenerateEncoderDecoderOutput) and out.sequences.shape == (n, 6)
    assert [a.shape for a in out.encoder_attentions] == [(n, h, s, s)] * layers
    assert [x.shape for x in out.encoder_hidden_states] == [(n, s, d)] * (layers + 1)
    fed = [2, 1, 1, 1]  # the prompt at the first step, then one token
    for t, new in enumerate(fed):
        assert out.scores[t].shape == out.logits[t].shape == (n, VOCAB)
        assert [a.shape for a in out.decoder_attentions[t]] == [(n, h, new, 2 + t)] * layers
        assert [a.shape for a in out.cross_attentions[t]] == [(n, h, new, s)] * layers
        assert [x.shape for x in out.decoder_hidden_states[t]] == [(n, new, d)] * (layers + 1)
    assert out[0] is out.sequences and out["scores"] is out.scores and len(out.to_tuple()) == len(out.keys())
    beams = m.generate(ids, mask, max_new_tokens=3, num_beams=2, return_dict_in_generate=True)
    assert isinstance(beams, GenerateBeamEncoderDecoderOutput)
    assert beams.keys() == ["sequences", "beam_indices", "past_key_values"]
    assert beams.beam_indices.shape == (n, beams.sequences.shape[1] - 1)


@pytest.mark.parametrize("family,tied", MODELS.values())
def test_use_cache_false_gives_the_same_tokens(family, tied):
    m = tiny(family, tied)
    ids, mask = inputs()
    for kwargs in (dict(max_new_tokens=9), dict(max_new_tokens=6, num_beams=3, num_return_sequences=2),
                   dict(max_new_tokens=6, decoder_input_ids=torch.tensor([[0, 4]] * 3))):
        cached = m.generate(ids, mask, **kwargs)
        assert torch.equal(m.generate(ids, mask, use_cache=False, **kwargs), cached)
    plain = m.generate(ids, mask, max_new_tokens=5, use_cache=False, return_dict_in_generate=True)
    assert plain.past_key_values is None


def test_nothing_extra_is_computed_unless_asked(monkeypatch):
    """The dict output alone, or output_scores without it, keeps the fast path: no attention/hidden decoding,
    the greedy argmax through the int8 screen (untied fp32 CPU head)."""
    m = tiny("mt5", False)
    ids, mask = inputs()
    expected = m.generate(ids, mask, max_new_tokens=6)

    def refuse(self, new):
        raise AssertionError("decode_with_outputs ran though no attentions / hidden states were asked for")

    argmax_calls = []
    original_argmax = generation.FastHead.argmax
    monkeypatch.setattr(generation.DecoderState, "decode_with_outputs", refuse)
    monkeypatch.setattr(generation.FastHead, "argmax",
                        lambda self, *a: argmax_calls.append(1) or original_argmax(self, *a))
    assert torch.equal(m.generate(ids, mask, max_new_tokens=6, return_dict_in_generate=True).sequences, expected)
    assert torch.equal(m.generate(ids, mask, max_new_tokens=6, output_scores=True), expected)  # a tensor, as HF
    assert len(argmax_calls) == 2 * (expected.shape[1] - 1)
    m.generate(ids, mask, max_new_tokens=4, num_beams=2, return_dict_in_generate=True)


def test_encoder_sources_agree():
    """input_ids, inputs_embeds and encoder_outputs give the same tokens; the prompt is continued."""
    m = tiny("umt5", True)
    ids, mask = inputs()
    for kwargs in (dict(max_new_tokens=6), dict(max_new_tokens=5, num_beams=3)):
        a = m.generate(ids, mask, **kwargs)
        assert torch.equal(m.generate(inputs_embeds=m.shared(ids).detach(), attention_mask=mask, **kwargs), a)
        assert torch.equal(m.generate(encoder_outputs=m.encode(ids, mask), attention_mask=mask, **kwargs), a)
        prefix = a[:, :3]
        assert torch.equal(m.generate(ids, mask, decoder_input_ids=prefix, **{**kwargs, "max_new_tokens":
                                                                              kwargs["max_new_tokens"] - 2})[:, :3],
                           prefix)
    with pytest.raises(ValueError, match="or inputs_embeds, or encoder_outputs"):
        m.generate(max_new_tokens=3)
    with pytest.raises(ValueError, match="decoder_input_ids must be"):
        m.generate(ids, mask, decoder_input_ids=torch.zeros(2, 2, dtype=torch.long))
