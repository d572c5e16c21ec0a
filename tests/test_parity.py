"""Numeric parity with transformers 4.57.x, both ways, for every class of both families.

transformers builds tiny random models, saves them in every Hub format and records its outputs; we load those
checkpoints and must give the same logits, hidden states, attentions and loss (1e-5, fp32). Then we save, and
transformers loads our checkpoints and must give the same numbers again.
"""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from refutil import run_reference

CLASSES = ["ForConditionalGeneration", "Model", "EncoderModel", "ForSequenceClassification",
           "ForTokenClassification", "ForQuestionAnswering"]
FORMATS = ["safetensors", "sharded_safetensors", "bin", "sharded_bin"]
CONFIGS = {
    # heads x d_kv != d_model, few buckets and a short max distance so the log-spaced buckets are exercised
    "gated_narrow": dict(vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
                         relative_attention_num_buckets=8, relative_attention_max_distance=16,
                         feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_labels=3),
    # relu, deeper decoder than encoder, tied embeddings (logits scaled by d_model**-0.5)
    "relu_deep_decoder_tied": dict(vocab_size=120, d_model=32, d_kv=16, d_ff=40, num_layers=2,
                                   num_decoder_layers=3, num_heads=2, feed_forward_proj="relu",
                                   tie_word_embeddings=True, num_labels=2),
    # shallower decoder than encoder
    "gated_deep_encoder": dict(vocab_size=120, d_model=20, d_kv=6, d_ff=36, num_layers=3, num_decoder_layers=1,
                               num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                               num_labels=4),
}
CASES = [(family, cfg, cls) for family in ("mt5", "umt5") for cfg in CONFIGS for cls in CLASSES]
ATOL = 1e-5


def case_name(family, cfg, cls):
    return f"{family}-{cfg}-{cls}"


def make_inputs(cls: str, vocab: int, num_labels: int, seed: int) -> dict[str, torch.Tensor]:
    """A batch of 3: one full row, one right-padded, one left-padded; every row ends its text with eos."""
    g = torch.Generator().manual_seed(seed)
    S, T = 9, 6
    ids = torch.randint(3, vocab, (3, S), generator=g)
    mask = torch.ones(3, S, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, :4] = 0
    ids[0, -1], ids[1, 5], ids[2, -1] = 1, 1, 1
    ids[mask == 0] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if cls == "EncoderModel":
        return inputs
    if cls == "ForTokenClassification":
        labels = torch.randint(0, num_labels, (3, S), generator=g)
        inputs["labels"] = labels.masked_fill(mask == 0, -100)
        return inputs
    if cls == "ForSequenceClassification":
        inputs["labels"] = torch.randint(0, num_labels, (3,), generator=g)
        return inputs
    if cls == "ForQuestionAnswering":
        inputs["start_positions"] = torch.tensor([1, 2, 5])
        inputs["end_positions"] = torch.tensor([3, 4, 20])  # 20 is outside: ignored by the loss
        return inputs
    dec_mask = torch.ones(3, T, dtype=torch.long)
    dec_mask[1, 4:] = 0
    if cls == "Model":
        dec = torch.randint(3, vocab, (3, T), generator=g)
        dec[:, 0] = 0
        inputs.update(decoder_input_ids=dec, decoder_attention_mask=dec_mask)
        return inputs
    labels = torch.randint(3, vocab, (3, T), generator=g)
    labels[1, 4:] = -100
    inputs.update(labels=labels, decoder_attention_mask=dec_mask)
    return inputs


def flatten(out: model.ModelOutput) -> dict[str, torch.Tensor]:
    flat = {}
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        if value is None or f.name == "past_key_values":
            continue
        if isinstance(value, tuple):
            flat.update({f"{f.name}.{i}": v for i, v in enumerate(value)})
        else:
            flat[f.name] = value
    return flat


def run_ours(m, inputs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return flatten(m(**inputs, output_attentions=True, output_hidden_states=True))


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """Runs the reference once for all cases (make, then check); returns per-case results."""
    root = tmp_path_factory.mktemp("parity")
    cases = []
    for i, (family, cfg, cls) in enumerate(CASES):
        name = case_name(family, cfg, cls)
        config = CONFIGS[cfg]
        if cls == "ForQuestionAnswering":  # transformers sizes qa_outputs by num_labels, which must be 2
            config = dict(config, num_labels=2)
        inputs_path = root / f"{name}.inputs.safetensors"
        save_file(make_inputs(cls, config["vocab_size"], config["num_labels"], i), inputs_path)
        cases.append(dict(name=name, family=family, cls=cls, config=config, seed=i,
                          format=FORMATS[i % len(FORMATS)], dir=str(root / f"{name}.hf"),
                          inputs=str(inputs_path), out=str(root / f"{name}.hf.out.safetensors")))
    jobs = root / "make.json"
    jobs.write_text(json.dumps({"cases": cases}))
    run_reference("ref_models.py", "make", jobs)

    results, check_cases = {}, []
    for case in cases:
        cls = getattr(model, ("UMT5" if case["family"] == "umt5" else "MT5") + case["cls"])
        ours = cls.from_pretrained(case["dir"])
        inputs = load_file(case["inputs"])
        results[case["name"]] = dict(case=case, ours=run_ours(ours, inputs), ref=load_file(case["out"]))
        ours.save_pretrained(root / f"{case['name']}.ours")
        check_cases.append(dict(case, dir=str(root / f"{case['name']}.ours"),
                                out=str(root / f"{case['name']}.check.safetensors")))
    jobs = root / "check.json"
    jobs.write_text(json.dumps({"cases": check_cases}))
    run_reference("ref_models.py", "check", jobs)
    for case in check_cases:
        results[case["name"]]["check"] = load_file(case["out"])
    return results


def assert_same(ours: dict, ref: dict, what: str) -> None:
    assert sorted(ours) == sorted(ref), f"{what}: output fields differ"
    for key in ref:
        assert ours[key].shape == ref[key].shape, f"{what}: {key} shape {ours[key].shape} vs {ref[key].shape}"
        diff = (ours[key].float() - ref[key].float()).abs().max().item()
        assert diff <= ATOL, f"{what}: {key} differs by {diff:.2e}"


@pytest.mark.parametrize("family,cfg,cls", CASES, ids=[case_name(*c) for c in CASES])
def test_transformers_checkpoint_loads_here_with_same_numbers(parity, family, cfg, cls):
    r = parity[case_name(family, cfg, cls)]
    assert_same(r["ours"], r["ref"], f"{r['case']['format']} checkpoint")
    if cls not in ("Model", "EncoderModel"):
        assert "loss" in r["ours"] or "logits" in r["ours"]


@pytest.mark.parametrize("family,cfg,cls", CASES, ids=[case_name(*c) for c in CASES])
def test_our_checkpoint_loads_in_transformers_with_same_numbers(parity, family, cfg, cls):
    r = parity[case_name(family, cfg, cls)]
    assert_same(r["ours"], r["check"], "our checkpoint in transformers")


def test_every_format_was_exercised(parity):
    from pathlib import Path

    seen = set()
    for r in parity.values():
        files = {p.name for p in Path(r["case"]["dir"]).iterdir()}
        if "model.safetensors" in files:
            seen.add("safetensors")
        if "model.safetensors.index.json" in files:
            seen.add("sharded_safetensors")
        if "pytorch_model.bin" in files:
            seen.add("bin")
        if "pytorch_model.bin.index.json" in files:
            seen.add("sharded_bin")
    assert seen == set(FORMATS)


PUBLISHED = {
    "mt5-small": ("mt5", dict(d_model=512, d_ff=1024, num_layers=8, num_heads=6, vocab_size=250112)),
    "mt5-base": ("mt5", dict(d_model=768, d_ff=2048, num_layers=12, num_heads=12, vocab_size=250112)),
    "mt5-large": ("mt5", dict(d_model=1024, d_ff=2816, num_layers=24, num_heads=16, vocab_size=250112)),
    "mt5-xl": ("mt5", dict(d_model=2048, d_ff=5120, num_layers=24, num_heads=32, vocab_size=250112)),
    "mt5-xxl": ("mt5", dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, vocab_size=250112)),
    "umt5-small": ("umt5", dict(d_model=512, d_ff=1024, num_layers=8, num_heads=6, vocab_size=256384)),
    "umt5-base": ("umt5", dict(d_model=768, d_ff=2048, num_layers=12, num_heads=12, vocab_size=256384)),
    "umt5-xl": ("umt5", dict(d_model=2048, d_ff=5120, num_layers=24, num_heads=32, vocab_size=256384)),
    "umt5-xxl": ("umt5", dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, vocab_size=256384)),
}


@pytest.mark.reference
def test_parameter_counts_of_published_shapes_equal_transformers(tmp_path):
    cases = [dict(name=n, family=f, cls="ForConditionalGeneration",
                  config=dict(c, d_kv=64, tie_word_embeddings=False)) for n, (f, c) in PUBLISHED.items()]
    jobs = tmp_path / "count.json"
    jobs.write_text(json.dumps({"cases": cases}))
    ref = json.loads(run_reference("ref_models.py", "count", jobs).strip().splitlines()[-1])
    ours = {}
    for case in cases:
        cfg_cls = model.UMT5Config if case["family"] == "umt5" else model.MT5Config
        cls = model.model_class(case["family"], "generation")
        with torch.device("meta"):
            ours[case["name"]] = cls(cfg_cls(**case["config"])).num_parameters()
    assert ours == ref
    assert ours["mt5-small"] == 300_176_768


# transformers' output class for each head, its fields in order: return_dict=False gives the set ones as a tuple.
SEQ2SEQ_REST = ("past_key_values", "decoder_hidden_states", "decoder_attentions", "cross_attentions",
                "encoder_last_hidden_state", "encoder_hidden_states", "encoder_attentions")
TRANSFORMERS_ORDER = {
    "ForConditionalGeneration": ("loss", "logits", *SEQ2SEQ_REST),                    # Seq2SeqLMOutput
    "Model": ("last_hidden_state", *SEQ2SEQ_REST),                                    # Seq2SeqModelOutput
    "EncoderModel": ("last_hidden_state", "hidden_states", "attentions"),              # BaseModelOutput
    "ForSequenceClassification": ("loss", "logits", *SEQ2SEQ_REST),                   # Seq2SeqSequenceClassifierOutput
    "ForTokenClassification": ("loss", "logits", "hidden_states", "attentions"),       # TokenClassifierOutput
    "ForQuestionAnswering": ("loss", "start_logits", "end_logits", *SEQ2SEQ_REST),     # Seq2SeqQuestionAnswering...
}


def same_value(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b)  # the KVCache: a new one per call


@pytest.mark.parametrize("family", ["mt5", "umt5"])
@pytest.mark.parametrize("cls", CLASSES)
def test_return_dict_false_gives_transformers_tuple(family, cls):
    config = dict(CONFIGS["gated_narrow"], num_labels=2 if cls == "ForQuestionAnswering" else 3)
    prefix, cfg_cls = ("UMT5", model.UMT5Config) if family == "umt5" else ("MT5", model.MT5Config)
    torch.manual_seed(0)
    m = getattr(model, prefix + cls)(cfg_cls(**config)).eval()
    inputs = dict(make_inputs(cls, config["vocab_size"], config["num_labels"], 0), output_attentions=True,
                  output_hidden_states=True)
    with torch.no_grad():
        out = m(**inputs)
        as_tuple = m(**inputs, return_dict=False)
        m.config.return_dict = False  # as transformers: the config's setting when the call gives none
        by_config, overridden = m(**inputs), m(**inputs, return_dict=True)
    names = [n for n in TRANSFORMERS_ORDER[cls] if getattr(out, n) is not None]
    assert isinstance(out, model.ModelOutput) and isinstance(overridden, model.ModelOutput)
    assert names[0] == ("loss" if cls not in ("Model", "EncoderModel") else "last_hidden_state")
    if cls == "ForTokenClassification":
        # transformers 4.57 returns (loss, logits, outputs[2:-1]) there, a slice that is always () (checked
        # against transformers in tests/test_dropin.py)
        for result in (as_tuple, by_config):
            assert len(result) == 3 and result[2] == () and same_value(result[:2], (out.loss, out.logits))
        return
    for result in (as_tuple, by_config, out.to_tuple()):
        assert type(result) is tuple and len(result) == len(names)
        for name, value in zip(names, result):
            assert same_value(value, getattr(out, name)), name
