"""The transformers drop-in API, differential against transformers 4.57.x (issue 12, the model items).

transformers builds tiny random checkpoints (both families; gated and relu; deeper decoder; tied and untied),
then both sides make the same calls a transformers user makes (tests/reference/dropin_calls.py): return_dict=False
and to_tuple, outputs[0] / slices / iteration, config-driven defaults, past_key_values indexed per layer and fed
back, inputs_embeds, head masks, 4-D decoder masks, get_encoder()/get_decoder() calls. Values within 1e-5, the
same field names in the same order, the same shapes and the same error types. Then resize_token_embeddings,
re-saving checkpoints with decoding defaults, config behaviour and ignore_mismatched_sizes.
"""
import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from model.config import GenerationConfig, MT5Config, UMT5Config
from model.hub import CheckpointError
from refutil import run_reference

sys.path.insert(0, str(Path(__file__).parent / "reference"))
from dropin_calls import config_changes, flatten, forward_inputs, run_calls  # noqa: E402

CLASSES = ["ForConditionalGeneration", "Model", "EncoderModel", "ForSequenceClassification",
           "ForTokenClassification", "ForQuestionAnswering"]
CONFIGS = {
    "gated_untied": dict(vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
                         relative_attention_num_buckets=8, relative_attention_max_distance=16,
                         feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_labels=3),
    "relu_deep_decoder_tied": dict(vocab_size=120, d_model=32, d_kv=16, d_ff=40, num_layers=2,
                                   num_decoder_layers=3, num_heads=2, feed_forward_proj="relu",
                                   tie_word_embeddings=True, num_labels=2),
}
CASES = [(family, cfg, cls) for family in ("mt5", "umt5") for cfg in CONFIGS for cls in CLASSES]
ATOL = 1e-5
RTOL = 1e-5  # fp32 round-off on logits of magnitude ~10 reaches 1.1e-5 absolute (1.4e-6 relative)
XLSUM_DEFAULTS = {"num_beams": 4, "max_length": 84, "no_repeat_ngram_size": 2, "length_penalty": 0.6}


def make_inputs(config: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    S, T, H = 9, 6, config["num_heads"]
    L, LD = config["num_layers"], config.get("num_decoder_layers") or config["num_layers"]
    ids = torch.randint(3, config["vocab_size"], (3, S), generator=g)
    mask = torch.ones(3, S, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, :4] = 0
    ids[0, -1], ids[1, 5], ids[2, -1] = 1, 1, 1
    ids[mask == 0] = 0
    dec = torch.randint(3, config["vocab_size"], (3, T), generator=g)
    dec[:, 0] = 0
    labels = torch.randint(3, config["vocab_size"], (3, T), generator=g)
    labels[1, 4:] = -100

    def heads(*shape):  # random 0/1 with at least one head off and one on in every row
        m = (torch.rand(*shape, generator=g) > 0.5).float()
        m[..., 0], m[..., -1] = 0.0, 1.0
        return m

    causal = torch.triu(torch.full((T, T), torch.finfo(torch.float32).min), 1)
    mask4d_1 = causal[None, None].repeat(3, 1, 1, 1)
    mask4d_1[1, :, 3:, 2] = torch.finfo(torch.float32).min      # a custom hole in row 1
    mask4d_h = causal[None, None].repeat(3, H, 1, 1)
    mask4d_h[0, 0, 4:, 1] = torch.finfo(torch.float32).min      # and one for a single head
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec, "labels": labels,
            "seq_labels": torch.randint(0, config["num_labels"], (3,), generator=g),
            "token_labels": torch.randint(0, config["num_labels"], (3, S), generator=g).masked_fill(mask == 0, -100),
            "start_positions": torch.tensor([1, 2, 5]), "end_positions": torch.tensor([3, 4, 20]),
            "head_mask": heads(L, H), "decoder_head_mask": heads(LD, H), "cross_attn_head_mask": heads(LD, H),
            "head_mask_1d": heads(H), "mask4d_1": mask4d_1, "mask4d_h": mask4d_h}


def ours_class(family: str, cls: str):
    return getattr(model, ("UMT5" if family == "umt5" else "MT5") + cls)


def xlsum_style(src: Path, dst: Path) -> Path:
    """A checkpoint that keeps its decoding defaults in config.json and has no generation_config.json."""
    shutil.copytree(src, dst)
    (dst / "generation_config.json").unlink(missing_ok=True)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **XLSUM_DEFAULTS}))
    return dst


def generation_json_style(src: Path, dst: Path) -> Path:
    """The same defaults in generation_config.json (as transformers >= 4.27 writes them)."""
    shutil.copytree(src, dst)
    (dst / "generation_config.json").write_text(json.dumps(
        {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0, **XLSUM_DEFAULTS}))
    return dst


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("dropin")
    forward = []
    for i, (family, cfg, cls) in enumerate(CASES):
        name = f"{family}-{cfg}-{cls}"
        config = dict(CONFIGS[cfg], num_labels=2) if cls == "ForQuestionAnswering" else CONFIGS[cfg]
        inputs = root / f"{name}.inputs.safetensors"
        save_file(make_inputs(config, i), inputs)
        forward.append(dict(name=name, family=family, cls=cls, config=config, seed=i, dir=str(root / name),
                            inputs=str(inputs), out=str(root / f"{name}.ref.safetensors")))
    jobs = {"forward": forward}
    (root / "jobs1.json").write_text(json.dumps(jobs))
    first = json.loads(run_reference("ref_dropin.py", root / "jobs1.json"))
    # Second round on checkpoints made from the first: resizing, re-saving, mismatched heads.
    resize, resave = [], []
    for family in ("mt5", "umt5"):
        for cfg in CONFIGS:
            for cls in ("ForConditionalGeneration", "ForSequenceClassification"):
                name = f"{family}-{cfg}-{cls}"
                resize.append(dict(name=name, family=family, cls=cls, dir=str(root / name), new=133, multiple=8))
        src = root / f"{family}-gated_untied-ForConditionalGeneration"
        for style, make in (("xlsum", xlsum_style), ("genjson", generation_json_style)):
            made = make(src, root / f"{family}-{style}")
            resave.append(dict(name=f"{family}-{style}", family=family, src=str(made),
                               dst=str(root / f"{family}-{style}.ref-saved")))
    mismatched = dict(family="mt5", dir=str(root / "mt5-gated_untied-ForSequenceClassification"), num_labels=5)
    (root / "jobs2.json").write_text(json.dumps({"resize": resize, "resave": resave, "mismatched": mismatched}))
    second = json.loads(run_reference("ref_dropin.py", root / "jobs2.json"))
    return {"root": root, "forward": {c["name"]: c for c in forward}, "meta": first["forward"],
            "resize": {c["name"]: c for c in resize}, "resized": second["resize"],
            "resave": {c["name"]: c for c in resave}, "resaved": second["resave"],
            "config": second["config"], "mismatched": second["mismatched"], "mismatched_job": mismatched}


@pytest.mark.parametrize("family,cfg,cls", CASES, ids=[f"{f}-{c}-{k}" for f, c, k in CASES])
def test_calls_match_transformers(reference, family, cfg, cls):
    case = reference["forward"][f"{family}-{cfg}-{cls}"]
    ours = ours_class(family, cls).from_pretrained(case["dir"]).eval()
    flat, meta = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # head_mask copied to the decoder, as transformers warns
        results = run_calls(ours, cls, load_file(case["inputs"]))
    for name, value in results.items():
        if type(value) is dict:  # a result record, not a (dict-like) model output
            meta[name] = value
        else:
            flatten(name, value, flat, meta)
    flagged = ours_class(family, cls).from_pretrained(case["dir"], output_attentions=True,
                                                      output_hidden_states=True).eval()
    with torch.no_grad():
        flatten("config_flags", flagged(**forward_inputs(cls, load_file(case["inputs"]))), flat, meta)
    ref_meta = reference["meta"][case["name"]]
    assert meta == ref_meta
    ref = load_file(case["out"])
    assert sorted(flat) == sorted(ref)
    for key, value in ref.items():
        assert flat[key].shape == value.shape, key
        torch.testing.assert_close(flat[key], value, atol=ATOL, rtol=RTOL, msg=lambda m, k=key: f"{k}: {m}")


def test_head_mask_changes_outputs_and_fast_path_untouched(reference):
    """A zero head mask really masks; with no head mask the SDPA path runs (no weights are materialised)."""
    case = reference["forward"]["mt5-gated_untied-ForConditionalGeneration"]
    ours = model.MT5ForConditionalGeneration.from_pretrained(case["dir"]).eval()
    inputs = load_file(case["inputs"])
    base = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"])
    with torch.no_grad():
        plain = ours(**base).logits
        masked = ours(**base, decoder_head_mask=torch.zeros(2, 3)).logits
    assert (plain - masked).abs().max() > 1e-3
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    try:
        torch.nn.functional.scaled_dot_product_attention = lambda *a, **k: calls.append(1) or original(*a, **k)
        with torch.no_grad():
            ours(**base)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert len(calls) == 2 + 2 * 2  # per layer: encoder self-attention, decoder self- and cross-attention


@pytest.mark.parametrize("family", ["mt5", "umt5"])
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("cls", ["ForConditionalGeneration", "ForSequenceClassification"])
def test_resize_token_embeddings(reference, family, cfg, cls):
    name = f"{family}-{cfg}-{cls}"
    job, ref = reference["resize"][name], reference["resized"][name]
    ours = ours_class(family, cls).from_pretrained(job["dir"]).eval()
    inputs = load_file(reference["forward"][name]["inputs"])
    base = forward_inputs(cls, inputs)
    old_shared = ours.get_input_embeddings().weight.detach().clone()
    old_head = None if ours.get_output_embeddings() is None else ours.get_output_embeddings().weight.detach().clone()
    with torch.no_grad():
        before = ours(**base).logits
    emb = ours.resize_token_embeddings(job["new"], pad_to_multiple_of=job["multiple"])
    out = ours.get_output_embeddings()
    got = {"input": list(emb.weight.shape), "shared": list(ours.get_input_embeddings().weight.shape),
           "output": None if out is None else list(out.weight.shape), "vocab_size": ours.config.vocab_size,
           "tied": out is not None and out.weight is emb.weight, "same_object": emb is ours.get_input_embeddings()}
    assert got == ref
    assert torch.equal(emb.weight[:old_shared.shape[0]], old_shared)
    if old_head is not None:
        assert torch.equal(out.weight[:old_head.shape[0]], old_head)
    with torch.no_grad():
        after = ours(**base).logits
    torch.testing.assert_close(after[..., :before.shape[-1]], before, atol=ATOL, rtol=0)


def test_resize_shrinks_and_pads():
    torch.manual_seed(0)
    m = model.MT5ForConditionalGeneration(MT5Config(vocab_size=50, d_model=8, d_kv=4, d_ff=8, num_layers=1,
                                                    num_heads=2))
    old = m.shared.weight.detach().clone()
    assert m.resize_token_embeddings() is m.shared
    assert m.resize_token_embeddings(pad_to_multiple_of=16).num_embeddings == 64
    m.resize_token_embeddings(30)
    assert m.shared.weight.shape == (30, 8) and m.lm_head.weight.shape == (30, 8) and m.config.vocab_size == 30
    assert torch.equal(m.shared.weight, old[:30])
    with pytest.raises(ValueError):
        m.resize_token_embeddings(40, pad_to_multiple_of=0)


@pytest.mark.parametrize("family", ["mt5", "umt5"])
@pytest.mark.parametrize("style", ["xlsum", "genjson"])
def test_resave_keeps_decoding_defaults(reference, tmp_path, family, style):
    job, ref = reference["resave"][f"{family}-{style}"], reference["resaved"][f"{family}-{style}"]
    m = ours_class(family, "ForConditionalGeneration").from_pretrained(job["src"])
    assert m.generation_config.num_beams == 4 and m.generation_config.max_length == 84
    m.save_pretrained(tmp_path / "saved")
    generation = json.loads((tmp_path / "saved" / "generation_config.json").read_text())
    expected = {k: v for k, v in ref["generation_config.json"].items() if k != "transformers_version"}
    assert generation == expected
    assert list(generation) == sorted(generation)
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert {k: config.get(k) for k in XLSUM_DEFAULTS} == {k: ref["config.json"].get(k) for k in XLSUM_DEFAULTS}
    again = ours_class(family, "ForConditionalGeneration").from_pretrained(tmp_path / "saved")
    g = again.generation_config
    assert {k: getattr(g, k) for k in ref["reloaded"]} == ref["reloaded"]
    # and transformers reads what we saved the same way
    assert GenerationConfig.from_pretrained(tmp_path / "saved").num_beams == 4
    again.save_pretrained(tmp_path / "twice")
    assert json.loads((tmp_path / "twice" / "generation_config.json").read_text()) == generation


def test_save_writes_generation_config_of_a_fresh_model(tmp_path):
    m = model.MT5ForConditionalGeneration(MT5Config(vocab_size=50, d_model=8, d_kv=4, d_ff=8, num_layers=1,
                                                    num_heads=2))
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {
        "_from_model_config": True, "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
    m.generation_config.num_beams = 3
    m.save_pretrained(tmp_path)
    assert model.MT5ForConditionalGeneration.from_pretrained(tmp_path).generation_config.num_beams == 3
    enc = model.MT5EncoderModel(MT5Config(vocab_size=50, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2))
    enc.save_pretrained(tmp_path / "enc")
    assert not (tmp_path / "enc" / "generation_config.json").exists()


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_config_behaves_as_pretrained_config(reference, family):
    ref = reference["config"][family]
    cfg_cls = UMT5Config if family == "umt5" else MT5Config
    c = cfg_cls(d_model=24, num_heads=3, num_layers=2, d_kv=8, bos_token_id=5, return_dict=False,
                output_attentions=True, torch_dtype="bfloat16", architectures=["X"], problem_type="regression")
    row = {k: getattr(c, k) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "head_dim",
                                      "bos_token_id", "return_dict", "output_attentions", "output_hidden_states",
                                      "use_cache", "architectures", "problem_type", "num_labels",
                                      "tie_word_embeddings", "use_return_dict")}
    row["dtype"] = "torch." + c.dtype
    row["attribute_map"] = {k: v for k, v in model.config.ATTRIBUTE_MAP.items() if k != "dtype"}
    row.update(config_changes(c, cfg_cls))
    assert row == ref


def test_config_files_and_subfolder(tmp_path, reference):
    c = MT5Config(d_model=24, num_heads=3, bos_token_id=5, dtype="float16")
    c.to_json_file(tmp_path / "c.json")
    back = MT5Config.from_json_file(tmp_path / "c.json")
    assert back == c and back.torch_dtype == "float16" and back.bos_token_id == 5
    assert MT5Config.from_dict(c.to_dict(), d_model=32).d_model == 32
    src = Path(reference["forward"]["mt5-gated_untied-ForConditionalGeneration"]["dir"])
    shutil.copytree(src, tmp_path / "repo" / "sub")
    assert MT5Config.from_pretrained(tmp_path / "repo", subfolder="sub").d_model == 32
    m = model.MT5ForConditionalGeneration.from_pretrained(tmp_path / "repo", subfolder="sub")
    assert m.config.d_model == 32
    # config keywords of from_pretrained set config attributes, as in transformers
    m = model.MT5ForConditionalGeneration.from_pretrained(src, output_attentions=True, return_dict=False)
    assert m.config.output_attentions and not m.config.return_dict
    with pytest.raises(TypeError):
        model.MT5ForConditionalGeneration.from_pretrained(src, no_such_option=1)


def test_ignore_mismatched_sizes(reference):
    job, ref = reference["mismatched_job"], reference["mismatched"]
    with pytest.warns(UserWarning, match="newly initialized because the shapes did not match") as record:
        m, info = model.MT5ForSequenceClassification.from_pretrained(
            job["dir"], num_labels=job["num_labels"], ignore_mismatched_sizes=True, output_loading_info=True)
    assert "classification_head.out_proj.weight: found shape (3, 32)" in str(record[0].message)
    got = [[k, list(a), list(b)] for k, (a, b) in zip(info["mismatched_keys"], info.mismatched_shapes)]
    assert sorted(got) == sorted(ref["mismatched"])
    assert list(m.classification_head.out_proj.weight.shape) == ref["out_proj"]
    assert torch.isfinite(m.classification_head.out_proj.weight).all()
    # the rest came from the checkpoint
    plain = model.MT5ForSequenceClassification.from_pretrained(job["dir"])
    assert torch.equal(plain.classification_head.dense.weight, m.classification_head.dense.weight)
    assert ref["strict"] is not None
    with pytest.raises(CheckpointError, match="disagree"):
        model.MT5ForSequenceClassification.from_pretrained(job["dir"], num_labels=job["num_labels"])


def test_config_flags_set_later_take_effect(reference):
    """Deliberate difference: transformers' stacks copy the config at build time, so setting
    model.config.output_attentions afterwards is ignored there; here it takes effect."""
    case = reference["forward"]["umt5-gated_untied-ForConditionalGeneration"]
    ours = model.UMT5ForConditionalGeneration.from_pretrained(case["dir"]).eval()
    inputs = forward_inputs("ForConditionalGeneration", load_file(case["inputs"]))
    ours.config.output_attentions = ours.config.output_hidden_states = True
    out = ours(**inputs)
    assert len(out.encoder_attentions) == 2 and len(out.decoder_hidden_states) == 3
    ours.config.use_cache = False
    assert ours(**inputs).past_key_values is None
    ours.config.return_dict = False
    assert isinstance(ours(**inputs), tuple)


def test_head_mask_alone_masks_an_equally_deep_decoder(reference):
    """transformers 4.57 means to copy head_mask to decoder_head_mask (with a FutureWarning) when both stacks are
    equally deep, but its name-mangled warning constant raises NameError there; here the copy is made."""
    case = reference["forward"]["mt5-gated_untied-ForConditionalGeneration"]
    ours = model.MT5ForConditionalGeneration.from_pretrained(case["dir"]).eval()
    inputs = load_file(case["inputs"])
    base = forward_inputs("ForConditionalGeneration", inputs)
    mask = inputs["head_mask_1d"]
    with pytest.warns(FutureWarning, match="decoder_head_mask"):
        alone = ours(**base, head_mask=mask).logits
    both = ours(**base, head_mask=mask, decoder_head_mask=mask).logits
    assert torch.equal(alone, both)
