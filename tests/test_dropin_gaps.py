"""The nine drop-in gaps of issue 24 (part 5), each differential against transformers 4.57.x.

transformers builds a small random MT5ForConditionalGeneration (equal encoder and decoder depth, no max_length in
its generation_config.json) and makes the calls of each gap on it and on a tiny mT5-style tokenizer
(tests/reference/ref_dropin_gaps.py); we make the same calls and compare: generate() without inputs (from
bos_token_id), generate(past_key_values=...) continuing a cache, the default max_length 20,
output_loading_info=True giving a dict, from_pretrained keyword overrides of config values, head_mask alone
reaching the decoder, and the tokenizer's batch_encode_plus, truncation_side and return_attention_mask=False.
"""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from refutil import run_reference

sys.path.insert(0, str(Path(__file__).parent / "reference"))
from spm_util import SENTENCES, train_sentencepiece, write_mt5_style  # noqa: E402

CONFIG = dict(vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
              relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
              tie_word_embeddings=False)
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world!", "Café, naïve, résumé."]
PAIRS = [["Hello world! How are you?", "Fine."], ["A", "Machine learning is a branch of AI."]]
ATOL = RTOL = 1e-5


def make_inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 120, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    ids[0, -1], ids[1, 5], ids[2, -1] = 1, 1, 1
    ids[mask == 0] = 0
    dec = torch.randint(3, 120, (3, 6), generator=g)
    dec[:, 0] = 0
    head_mask = (torch.rand(2, 3, generator=g) > 0.5).float()
    head_mask[:, 0], head_mask[:, -1] = 0.0, 1.0
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
            "labels": torch.randint(3, 120, (3, 6), generator=g), "head_mask": head_mask}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("gaps")
    save_file(make_inputs(), root / "inputs.safetensors")
    tok = write_mt5_style(root / "tok", train_sentencepiece(SENTENCES * 4, vocab_size=2000, hard_vocab_limit=False))
    job = {"config": CONFIG, "seed": 0, "dir": str(root / "ckpt"), "inputs": str(root / "inputs.safetensors"),
           "out": str(root / "out.safetensors"), "tokenizer": str(tok), "texts": TEXTS, "pairs": PAIRS}
    (root / "job.json").write_text(json.dumps(job))
    run_reference("ref_dropin_gaps.py", root / "job.json", root / "out.json")
    out = json.loads((root / "out.json").read_text())
    m = model.MT5ForConditionalGeneration.from_pretrained(job["dir"])
    return dict(job=job, model=m, x=load_file(job["inputs"]), ref=out["model"], tok_ref=out["tokenizer"],
                tok=model.MT5Tokenizer.from_pretrained(tok), tensors=load_file(job["out"]))


def error_of(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e).__name__
    return None


# ---------------------------------------------------------------------------------------------------- models
def test_generate_without_inputs_starts_from_bos(reference):
    m, ref = reference["model"], reference["ref"]
    assert error_of(lambda: m.generate(max_new_tokens=3)) == ref["no_inputs_error"] == "ValueError"
    with pytest.raises(ValueError, match="bos_token_id` has to be defined"):
        m.generate(max_new_tokens=3)
    assert m.generate(bos_token_id=5, max_new_tokens=6).tolist() == ref["bos"]


def test_generate_continues_past_key_values(reference):
    m, x, ref = reference["model"], reference["x"], reference["ref"]
    ids, mask, dec = x["input_ids"], x["attention_mask"], x["decoder_input_ids"]
    with torch.no_grad():
        first = m(input_ids=ids, attention_mask=mask, decoder_input_ids=dec[:, :2], use_cache=True)
    assert first.past_key_values.get_seq_length() == 2
    continued = m.generate(ids, attention_mask=mask, decoder_input_ids=dec[:, :4],
                           past_key_values=first.past_key_values, max_new_tokens=5)
    assert continued.tolist() == ref["continued"] == ref["fresh"]
    assert first.past_key_values.get_seq_length() > 4   # grown in place, as transformers' cache
    with pytest.raises(ValueError, match="holds .* decoder positions"):
        m.generate(ids, attention_mask=mask, decoder_input_ids=dec[:, :2], past_key_values=m(
            input_ids=ids, attention_mask=mask, decoder_input_ids=dec[:, :2], use_cache=True).past_key_values)


def test_default_max_length_is_twenty(reference):
    m, x, ref = reference["model"], reference["x"], reference["ref"]
    ids, mask, dec = x["input_ids"], x["attention_mask"], x["decoder_input_ids"]
    assert m.generation_config.max_length == ref["default_max_length"] == 20
    assert list(m.generate(ids, attention_mask=mask).shape) == ref["default_shape"]
    assert list(m.generate(ids, attention_mask=mask, max_length=20).shape) == ref["max_length_20_shape"]
    assert list(m.generate(ids, attention_mask=mask, decoder_input_ids=dec[:, :3]).shape) == \
        ref["prompt_default_shape"]


def test_output_loading_info_is_a_dict(reference):
    job, ref = reference["job"], reference["ref"]
    _, info = model.MT5ForConditionalGeneration.from_pretrained(job["dir"], output_loading_info=True)
    assert isinstance(info, dict) and ref["info"]["type"] == "dict"
    assert list(info) == ref["info"]["keys"]
    assert {k: [type(v).__name__, sorted(map(str, v))] for k, v in info.items()} == ref["info"]["values"]
    assert info.missing_keys == info["missing_keys"] == []
    with pytest.warns(UserWarning, match="initialised at random"):
        _, head = model.MT5ForSequenceClassification.from_pretrained(job["dir"], output_loading_info=True)
    assert {k: sorted(map(str, v)) for k, v in head.items()} == ref["head_info"]


def test_from_pretrained_overrides_config_values(reference):
    over = model.MT5ForConditionalGeneration.from_pretrained(reference["job"]["dir"], dropout_rate=0.25,
                                                             output_attentions=True)
    got = {"dropout_rate": over.config.dropout_rate, "output_attentions": over.config.output_attentions,
           "layer_p": over.encoder.block[0].layer[0].dropout.p,
           "ff_p": over.decoder.block[1].layer[2].DenseReluDense.dropout.p}
    assert got == reference["ref"]["override"]


def test_head_mask_alone_reaches_an_equally_deep_decoder(reference):
    """transformers 4.57 means to copy head_mask to the decoder here (its FutureWarning says so) but raises
    NameError on its own name-mangled warning text; we make the copy and equal its explicit two-mask call."""
    m, x, ref, tensors = reference["model"], reference["x"], reference["ref"], reference["tensors"]
    assert ref["head_mask_alone_error"] == "NameError"
    base = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"], labels=x["labels"])
    with pytest.warns(FutureWarning, match="decoder_head_mask"), torch.no_grad():
        alone = m(**base, head_mask=x["head_mask"]).logits
    torch.testing.assert_close(alone, tensors["head_masked_logits"], atol=ATOL, rtol=RTOL)
    assert (alone - tensors["plain_logits"]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ tokenizer
def as_lists(encoding) -> dict:
    return {k: v for k, v in dict(encoding).items()}


def test_batch_encode_plus(reference):
    tok, ref = reference["tok"], reference["tok_ref"]
    assert as_lists(tok.batch_encode_plus(TEXTS)) == ref["batch"]
    assert as_lists(tok.batch_encode_plus([tuple(p) for p in PAIRS])) == ref["batch_pairs"]
    assert as_lists(tok.batch_encode_plus(TEXTS, padding=True, max_length=6, truncation=True)) == ref["batch_padded"]


def test_return_attention_mask_false(reference):
    tok, ref = reference["tok"], reference["tok_ref"]
    assert as_lists(tok(TEXTS, return_attention_mask=False)) == ref["no_mask"]
    assert as_lists(tok(TEXTS, padding=True, return_attention_mask=False)) == ref["no_mask_padded"]
    assert as_lists(tok.encode_plus(TEXTS[0], return_attention_mask=False)) == ref["no_mask_plus"]
    assert as_lists(tok(TEXTS, text_target=TEXTS[::-1], return_attention_mask=False)) == ref["no_mask_target"]


def test_truncation_side(reference, tmp_path):
    ref = reference["tok_ref"]
    tok = model.MT5Tokenizer.from_pretrained(reference["job"]["tokenizer"])
    assert tok.truncation_side == ref["truncation_side"] == "right"
    tok.truncation_side = "left"
    assert as_lists(tok(TEXTS, truncation=True, max_length=5)) == ref["left"]
    firsts, seconds = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    assert as_lists(tok(firsts, seconds, truncation=True, max_length=7)) == ref["left_pairs"]
    assert as_lists(tok(firsts, seconds, truncation="only_second", max_length=9)) == ref["left_only_second"]
    left = model.MT5Tokenizer.from_pretrained(reference["job"]["tokenizer"], truncation_side="left")
    assert [left.truncation_side, as_lists(left(TEXTS, truncation=True, max_length=5))] == ref["left_kwarg"]
    left.save_pretrained(tmp_path / "saved")   # kept on save, as transformers keeps its init keywords
    assert model.MT5Tokenizer.from_pretrained(tmp_path / "saved").truncation_side == "left"
    tok.truncation_side = "middle"
    with pytest.raises(ValueError, match="truncation_side must be 'right' or 'left'"):
        tok(TEXTS[0])
