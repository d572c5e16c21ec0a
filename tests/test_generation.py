"""generate(): token-identical to transformers 4.57 for greedy and beam search, sampling by its distribution,
cached = uncached, streaming, span filling, attention capture, bad settings and the command line."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import model
from model import MT5Config, MT5ForConditionalGeneration, MT5Tokenizer, UMT5Config, UMT5ForConditionalGeneration
from model.generation import MAX_NEW_TOKENS_LIMIT, GenerationConfig, log_normalizer, warp_for_sampling
from model.textgen import (TextStreamer, assemble_spans, capture_attention, encode_inputs, fill_spans,
                           generate_text, stream_text)
from refutil import ROOT, run_reference
from reference.spm_util import train_model, write_mt5_style, write_umt5_style

TINY = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=3)
SETTINGS = {
    "greedy": dict(max_new_tokens=12),
    "greedy_min_new": dict(max_new_tokens=10, min_new_tokens=8),
    "greedy_repetition": dict(max_new_tokens=12, repetition_penalty=1.8),
    "greedy_ngram": dict(max_new_tokens=14, no_repeat_ngram_size=2),
    "greedy_bad_words": dict(max_new_tokens=10, bad_words_ids=[[5], [7, 8]]),
    "beam3": dict(max_new_tokens=10, num_beams=3),
    "beam4_ret2_lp": dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, length_penalty=0.6,
                          no_repeat_ngram_size=2),
    "beam3_early": dict(max_new_tokens=9, num_beams=3, early_stopping=True),
    "beam3_never": dict(max_new_tokens=9, num_beams=3, early_stopping="never", length_penalty=2.0),
    "beam2_min_rep": dict(max_new_tokens=8, num_beams=2, min_new_tokens=5, repetition_penalty=1.3),
    "max_length": dict(max_length=7, num_beams=2),
    # csebuetnlp/mT5_multilingual_XLSum's decoding settings (its max_length 84 cut to fit the tiny model)
    "xlsum": dict(max_length=16, num_beams=4, no_repeat_ngram_size=2, length_penalty=0.6),
    "greedy_ngram3": dict(max_new_tokens=14, no_repeat_ngram_size=3),
}


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-tok")
    proto = train_model()
    return {"mt5": write_mt5_style(root / "mt5", proto), "umt5": write_umt5_style(root / "umt5", proto)}


def tiny_model(family, tok_dir, seed=0, **overrides):
    torch.manual_seed(seed)
    tok = MT5Tokenizer.from_pretrained(tok_dir)
    cfg_cls, cls = (UMT5Config, UMT5ForConditionalGeneration) if family == "umt5" else (
        MT5Config, MT5ForConditionalGeneration)
    # eos made likely enough that some beams finish early
    m = cls(cfg_cls(vocab_size=len(tok), **{**TINY, **overrides})).eval()
    return m, tok


def batch(tok, texts):
    enc = encode_inputs(tok, texts)
    return enc.input_ids, enc.attention_mask


TEXTS = ["The quick brown fox jumps over the lazy dog.", "Привет, мир!", "你好，世界！机器学习是人工智能的一个分支。"]


@pytest.fixture(scope="session")
def reference(tokenizers, tmp_path_factory):
    """transformers' generate() for every family x setting, and one teacher-forced pass with attentions."""
    root = tmp_path_factory.mktemp("gen-ref")
    cases, models = [], {}
    for family, tok_dir in tokenizers.items():
        m, tok = tiny_model(family, tok_dir)
        path = root / family
        m.save_pretrained(path)
        models[family] = (m, tok)
        ids, mask = batch(tok, TEXTS)
        for name, kwargs in SETTINGS.items():
            cases.append(dict(name=f"{family}-{name}", dir=str(path), family=family, input_ids=ids.tolist(),
                              attention_mask=mask.tolist(), kwargs=kwargs))
        one, one_mask = batch(tok, TEXTS[:1])
        cases.append(dict(name=f"{family}-attention", dir=str(path), family=family, input_ids=one.tolist(),
                          attention_mask=one_mask.tolist(), decoder_input_ids=[[0, 5, 9, 11, 7]]))
    jobs, out = root / "jobs.json", root / "out.json"
    jobs.write_text(json.dumps({"cases": cases}))
    run_reference("ref_generate.py", jobs, out)
    return models, json.loads(out.read_text())


def trim(rows):
    """Sequences up to and including eos: transformers pads finished beams with eos (its fill value is
    `pad_token_id or eos_token_id`, and pad is 0), we pad with pad."""
    out = []
    for row in rows:
        row = list(row)
        out.append(row[: row.index(1, 1) + 1] if 1 in row[1:] else row)
    return out


@pytest.mark.parametrize("family", ["mt5", "umt5"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_tokens_equal_transformers(reference, family, setting):
    models, ref = reference
    m, tok = models[family]
    ids, mask = batch(tok, TEXTS)
    ours = m.generate(ids, mask, **SETTINGS[setting])
    assert trim(ours.tolist()) == trim(ref[f"{family}-{setting}"]["sequences"])
    assert ours[:, 0].eq(0).all()  # sequences start with the decoder start token, as in transformers


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_beam_sequence_scores_equal_transformers(reference, family):
    models, ref = reference
    m, tok = models[family]
    ids, mask = batch(tok, TEXTS)
    out = m.generate(ids, mask, return_dict_in_generate=True, output_scores=True, **SETTINGS["beam4_ret2_lp"])
    np.testing.assert_allclose(out.sequences_scores.numpy(), ref[f"{family}-beam4_ret2_lp"]["sequences_scores"],
                               atol=1e-5)


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_captured_attention_equals_transformers_eager(reference, family):
    models, ref = reference
    m, tok = models[family]
    maps = capture_attention(m, tok, TEXTS[0], target_ids=[5, 9, 11, 7, 1])
    r = ref[f"{family}-attention"]
    np.testing.assert_allclose(maps.encoder, np.array(r["encoder_attentions"])[:, 0], atol=1e-6)
    np.testing.assert_allclose(maps.decoder, np.array(r["decoder_attentions"])[:, 0], atol=1e-6)
    np.testing.assert_allclose(maps.cross, np.array(r["cross_attentions"])[:, 0], atol=1e-6)
    assert maps.encoder.shape == (2, 3, len(maps.source_tokens), len(maps.source_tokens))
    assert maps.cross.shape == (2, 3, 5, len(maps.source_tokens)) and len(maps.target_tokens) == 5
    assert maps.source_tokens[-1] == "</s>" and maps.target_tokens[-1] == "</s>"


def naive_greedy(m, ids, mask, steps):
    """Greedy decoding with a full forward pass (no cache) at every step."""
    dec = torch.zeros(ids.shape[0], 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(steps):
            logits = m(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False).logits
            dec = torch.cat([dec, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return dec


@pytest.mark.parametrize("family", ["mt5", "umt5"])
@pytest.mark.parametrize("layers", [(2, 2), (1, 3), (3, 1)])
def test_cached_decoding_equals_uncached(tokenizers, family, layers):
    """Also covers num_decoder_layers > num_layers, where transformers 4.57's generate() itself crashes."""
    m, tok = tiny_model(family, tokenizers[family], num_layers=layers[0], num_decoder_layers=layers[1])
    ids, mask = batch(tok, TEXTS)
    fast = m.generate(ids, mask, max_new_tokens=10, min_new_tokens=10)
    assert torch.equal(fast, naive_greedy(m, ids, mask, 10))


def test_greedy_drops_finished_rows_from_the_decoder_batch(tokenizers):
    """Rows that ended leave the decoder batch; every row's tokens stay those it gets decoded alone."""
    m, tok = tiny_model("mt5", tokenizers["mt5"], seed=9)   # its second text ends after 11 tokens
    texts = TEXTS * 2
    ids, mask = batch(tok, texts)
    sizes = []
    hook = m.decoder.register_forward_hook(lambda _m, args, _out: sizes.append(args[0].shape[0]))
    try:
        together = m.generate(ids, mask, max_new_tokens=30)
    finally:
        hook.remove()
    lengths = [len(row) for row in trim(together.tolist())]
    assert min(lengths) < max(lengths), "no row ended early: pick another seed"
    assert sizes[0] == len(texts) and min(sizes) < len(texts)
    assert sizes == sorted(sizes, reverse=True)
    for i, text in enumerate(texts):
        alone = m.generate(*batch(tok, [text]), max_new_tokens=30)
        assert trim(alone.tolist()) == trim(together[i:i + 1].tolist())


def test_chunked_log_normalizer_equals_logsumexp():
    """Beam search's logsumexp, by vocabulary chunks (the last one partial), with -inf bans and a wide spread."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 70001, generator=g) * torch.tensor([[1.0], [30.0], [0.1]])
    logits[0, :5] = float("-inf")
    torch.testing.assert_close(log_normalizer(logits, chunk=16384), torch.logsumexp(logits, -1, keepdim=True))


@pytest.mark.reference
def test_full_size_shapes_match_transformers(tmp_path):
    """mt5-small and umt5-small shapes with random weights: greedy and beam tokens equal transformers'."""
    cases, models = [], {}
    for family, vocab in (("mt5", 250112), ("umt5", 256384)):
        torch.manual_seed(1)
        cfg = (UMT5Config if family == "umt5" else MT5Config)(vocab_size=vocab, tie_word_embeddings=False)
        m = model.model_class(family, "generation")(cfg).eval()
        m.save_pretrained(tmp_path / family)
        g = torch.Generator().manual_seed(2)
        ids = torch.randint(3, 250000, (2, 24), generator=g)
        ids[:, -1] = 1
        mask = torch.ones_like(ids)
        mask[1, 15:] = 0
        ids[1, 15:] = 0
        models[family] = (m, ids, mask)
        for name, kwargs in {"greedy": dict(max_new_tokens=12),
                             "beam": dict(max_new_tokens=6, num_beams=3, length_penalty=0.8),
                             "xlsum": dict(max_length=10, num_beams=4, no_repeat_ngram_size=2,
                                           length_penalty=0.6)}.items():
            cases.append(dict(name=f"{family}-{name}", dir=str(tmp_path / family), family=family,
                              input_ids=ids.tolist(), attention_mask=mask.tolist(), kwargs=kwargs))
    (tmp_path / "jobs.json").write_text(json.dumps({"cases": cases}))
    run_reference("ref_generate.py", tmp_path / "jobs.json", tmp_path / "out.json")
    ref = json.loads((tmp_path / "out.json").read_text())
    for case in cases:
        m, ids, mask = models[case["family"]]
        assert trim(m.generate(ids, mask, **case["kwargs"]).tolist()) == trim(ref[case["name"]]["sequences"]), \
            case["name"]


# -- sampling -------------------------------------------------------------------------------------------------
def test_sampling_is_reproducible_with_a_seed(tokenizers):
    m, tok = tiny_model("mt5", tokenizers["mt5"])
    ids, mask = batch(tok, TEXTS)
    a = m.generate(ids, mask, do_sample=True, seed=7, max_new_tokens=12)
    b = m.generate(ids, mask, do_sample=True, seed=7, max_new_tokens=12)
    c = m.generate(ids, mask, do_sample=True, seed=8, max_new_tokens=12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(m.generate(ids, mask, do_sample=True, generator=g, max_new_tokens=12), a)
    assert torch.equal(m.generate(ids, mask, do_sample=True, top_k=1, seed=3, max_new_tokens=12),
                       m.generate(ids, mask, max_new_tokens=12))


def first_token_counts(m, ids, n, **kwargs):
    seqs = m.generate(ids, do_sample=True, num_return_sequences=n, max_new_tokens=1, seed=0, **kwargs)
    return torch.bincount(seqs[:, 1], minlength=m.config.vocab_size).float()


def expected(m, ids, **warp):
    with torch.no_grad():
        logits = m(input_ids=ids, decoder_input_ids=torch.zeros(1, 1, dtype=torch.long)).logits[0, -1]
    cfg = GenerationConfig(do_sample=True, **warp)
    return torch.softmax(warp_for_sampling(logits[None].float(), cfg)[0], -1)


@pytest.mark.parametrize("warp", [dict(temperature=0.7, top_k=0), dict(temperature=1.5, top_k=0),
                                  dict(top_k=5), dict(top_p=0.3, top_k=0), dict(top_k=20, top_p=0.5,
                                                                                temperature=2.0)])
def test_sampling_follows_the_warped_distribution(tokenizers, warp):
    """4000 first tokens: only allowed tokens appear, and frequencies match the warped softmax."""
    m, tok = tiny_model("mt5", tokenizers["mt5"], seed=9)   # its second text ends after 11 tokens
    # sharpen the head so the distribution has structure worth testing
    with torch.no_grad():
        m.lm_head.weight.mul_(6.0)
    ids, _ = batch(tok, TEXTS[:1])
    n = 4000
    counts = first_token_counts(m, ids, n, **warp)
    p = expected(m, ids, **warp)
    assert counts[p == 0].sum() == 0, "a token outside top-k / top-p was sampled"
    allowed = int((p > 0).sum())
    if "top_k" in warp and warp["top_k"]:
        assert allowed <= warp["top_k"]
    if "top_p" in warp:
        kept = p[p > 0]
        assert kept.sum() > 0.999 and (kept.sum() - kept.min()) < warp["top_p"] + 1e-6 or allowed == 1
    freq = counts / n
    big = p > 0.02
    assert torch.allclose(freq[big], p[big], atol=4 * (p[big] * (1 - p[big]) / n).sqrt().max().item() + 0.01)


# -- bad settings -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    (dict(max_new_tokens=0), "max_new_tokens must be at least 1"),
    (dict(top_p=0.0, do_sample=True), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5, do_sample=True), r"top_p must be in \(0, 1\]"),
    (dict(temperature=-1.0, do_sample=True), "temperature must be > 0"),
    (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences \(3\) cannot exceed num_beams \(2\)"),
    (dict(num_return_sequences=2), r"num_return_sequences \(2\) cannot exceed num_beams \(1\)"),
    (dict(early_stopping="sometimes", num_beams=2), "early_stopping must be True, False or 'never'"),
    (dict(nonsense=3), r"unknown argument\(s\) \['nonsense'\]"),
])
def test_bad_settings_are_refused(tokenizers, kwargs, message):
    m, tok = tiny_model("mt5", tokenizers["mt5"])
    ids, mask = batch(tok, TEXTS[:1])
    with pytest.raises((ValueError, TypeError), match=message):
        m.generate(ids, mask, **kwargs)


def test_absurd_max_new_tokens_is_clamped(tokenizers):
    m, tok = tiny_model("mt5", tokenizers["mt5"])
    cfg = m.generation_config.updated(max_new_tokens=10 ** 9)
    with pytest.warns(UserWarning, match=f"generating at most {MAX_NEW_TOKENS_LIMIT}"):
        assert cfg.total_length() == MAX_NEW_TOKENS_LIMIT + 1


def test_empty_and_huge_inputs(tokenizers):
    m, tok = tiny_model("mt5", tokenizers["mt5"])
    for text in ["", "   \n\t "]:
        with pytest.raises(ValueError, match="input 1 is empty"):
            generate_text(m, tok, text)
    enc = encode_inputs(tok, "word " * 20000, max_input_tokens=64)
    assert enc.truncated == [True] and enc.input_ids.shape == (1, 64) and enc.input_ids[0, -1] == 1
    assert encode_inputs(tok, "short text").truncated == [False]
    out = generate_text(m, tok, "x" * 100_000, max_input_tokens=64, max_new_tokens=3)
    assert isinstance(out[0], str)


def test_defaults_come_from_the_checkpoint(tokenizers, tmp_path):
    """csebuetnlp/mT5_multilingual_XLSum keeps its decoding settings in config.json."""
    m, _ = tiny_model("mt5", tokenizers["mt5"])
    m.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").unlink()  # XLSum has none: its defaults are only in config.json
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(num_beams=4, max_length=84, no_repeat_ngram_size=2, length_penalty=0.6)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    g = MT5ForConditionalGeneration.from_pretrained(tmp_path).generation_config
    assert (g.num_beams, g.max_length, g.no_repeat_ngram_size, g.length_penalty) == (4, 84, 2, 0.6)
    assert GenerationConfig.from_pretrained(tmp_path) == g  # the json files alone, no weights read
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": 2, "decoder_start_token_id": 0,
                                                                 "transformers_version": "4.57.6"}))
    g = MT5ForConditionalGeneration.from_pretrained(tmp_path).generation_config
    assert g.num_beams == 2 and g.max_length == 20  # generation_config.json wins; transformers: default 20
    assert GenerationConfig.from_pretrained(tmp_path) == g
    assert m.generate(torch.tensor([[5, 1]]), cache_implementation="dynamic", max_new_tokens=2).shape[1] <= 3
    with pytest.raises(ValueError, match="cache_implementation='static' is not supported: use None or 'dynamic'"):
        m.generate(torch.tensor([[5, 1]]), cache_implementation="static", max_new_tokens=2)


# -- streaming and span filling --------------------------------------------------------------------------------
def test_streamer_holds_back_split_characters_and_handles_sentinels(tokenizers):
    tok = MT5Tokenizer.from_pretrained(tokenizers["mt5"])
    text = "Olá 😀 мир"
    ids = tok.encode(text)[:-1]
    assert any(3 <= i < 259 for i in ids), "the test needs byte-fallback pieces"
    ids = ids[:2] + [tok.sentinel_id(0)] + ids[2:]
    s = TextStreamer(tok, keep_sentinels=True)
    pieces = [s.push(i) for i in ids] + [s.end()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids)
    plain = TextStreamer(tok)
    assert "".join([plain.push(i) for i in ids] + [plain.end()]) == tok.decode(
        [i for i in ids if not tok.is_sentinel(i)], skip_special_tokens=True)


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_stream_text_equals_generate_text(tokenizers, family):
    m, tok = tiny_model(family, tokenizers[family])
    for kwargs in (dict(max_new_tokens=15), dict(max_new_tokens=15, do_sample=True, seed=4),
                   dict(max_new_tokens=8, num_beams=2)):
        pieces = list(stream_text(m, tok, TEXTS[1], **kwargs))
        assert "".join(pieces) == generate_text(m, tok, TEXTS[1], **kwargs)[0]
        if "num_beams" not in kwargs:
            assert len(pieces) > 1


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_span_assembly_tolerates_missing_repeated_and_extra_sentinels(tokenizers, family):
    tok = MT5Tokenizer.from_pretrained(tokenizers[family])
    s = tok.sentinel_id
    text = "A <extra_id_0> fox<extra_id_1> over <extra_id_2>."
    words = tok.encode("quick brown", add_special_tokens=False)
    lazy = tok.encode("the lazy dog", add_special_tokens=False)
    generated = [s(0)] + words + [s(2)] + lazy + [s(0)] + tok.encode("again", add_special_tokens=False) + \
        [s(5)] + tok.encode("spare", add_special_tokens=False) + [1, 0, 0]
    out = assemble_spans(tok, text, generated)
    assert [(sp.marker, sp.text) for sp in out.spans] == [
        ("<extra_id_0>", "quick brown"), ("<extra_id_1>", ""), ("<extra_id_2>", "the lazy dog")]
    assert out.missing == ["<extra_id_1>"]
    assert [(e.marker, e.text) for e in out.extra] == [("<extra_id_5>", "spare")]
    assert out.text == "A quick brown fox over the lazy dog."


def test_fill_spans_end_to_end(tokenizers):
    m, tok = tiny_model("umt5", tokenizers["umt5"])
    out = fill_spans(m, tok, "Hello <extra_id_0> world <extra_id_1>!", max_new_tokens=12)
    assert [s.marker for s in out.spans] == ["<extra_id_0>", "<extra_id_1>"]
    assert "<extra_id_" not in out.text and out.text.startswith("Hello")
    with pytest.raises(ValueError, match="no <extra_id_N> marker"):
        fill_spans(m, tok, "no markers here")


# -- command line -------------------------------------------------------------------------------------------------
def test_command_line_generates_jsonl_with_progress(tokenizers, tmp_path):
    m, tok = tiny_model("mt5", tokenizers["mt5"])
    m.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "in.txt").write_text("\n".join(TEXTS + ["", "Hallo Welt"]) + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "model", "generate", "--model", str(tmp_path / "ckpt"),
                           "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.jsonl"),
                           "--jsonl", "--batch-size", "2", "--max-new-tokens", "6", "--num-beams", "2"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["input"] for r in rows] == TEXTS + ["", "Hallo Welt"]
    assert rows[3]["output"] == ""
    expected_first = generate_text(m, tok, TEXTS[0], max_new_tokens=6, num_beams=2)[0]
    assert rows[0]["output"] == expected_first
    assert "5/5" in proc.stderr  # the progress bar reached the end
