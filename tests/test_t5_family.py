"""T5-architecture checkpoints (`model_type: t5`): MADLAD-400, Flan-T5, original t5-*, aya-101 (issue 24, part 3).

transformers 4.57 builds small random checkpoints of each variant with T5Config / T5ForConditionalGeneration and
records its outputs and greedy/beam tokens; we load them and must give the same numbers (1e-5, fp32) and the same
tokens; transformers loads what we save back. aya-101's config (reduced in depth and width) is saved sharded with
the Hub's file names. The tokenizers: a MADLAD-style SentencePiece model (unk 0, pad 1, eos 2, `<2xx>` language
tokens) and a Flan-T5-style one (T5's layout, 100 `<extra_id_N>` added), read from `spiece.model` and from
`tokenizer.json` as transformers saved them, against transformers' T5Tokenizer / T5TokenizerFast.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from model.tiny import train_madlad_style, train_sentencepiece, write_madlad_style
from refutil import run_reference

sys.path.insert(0, str(Path(__file__).parent / "reference"))
from spm_util import SENTENCES  # noqa: E402

ATOL = 1e-5   # tests/test_parity.py's tolerance
RTOL = 1e-5   # as tests/test_dropin.py: fp32 round-off on aya's largest logits (~20, max over 250k rows) is 1.1e-5
LANGUAGES = ["de", "fr", "es", "pt", "ru", "ja", "zh", "hi", "ar", "sw", "sr_Latn"]
TEXTS = ["<2de> How are you today?", "<2fr> The quick brown fox.", "<2ja>Machine learning, naïve café.",
         "Hello <2es> world", "plain text without a language token", "Привет, мир! 123"]
FLAN_TEXTS = ["translate English to German: How old are you?", "The <extra_id_0> walks in <extra_id_1> park.",
              "Café, naïve, résumé 😀", "question: what is 2+2? context: 2+2 is 4."]

# aya-101's config.json (CohereForAI/aya-101: mt5-xxl's shape saved as t5); the test copy is reduced in size.
AYA_101 = {
    "_name_or_path": "/home/patrick/t5/mt5-xxl", "architectures": ["T5ForConditionalGeneration"],
    "classifier_dropout": 0.0, "d_ff": 10240, "d_kv": 64, "d_model": 4096, "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
    "model_type": "t5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24, "output_past": True,
    "pad_token_id": 0, "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False, "tokenizer_class": "T5Tokenizer", "transformers_version": "4.37.2",
    "use_cache": True, "vocab_size": 250112,
}
MADLAD_3B = {
    "architectures": ["T5ForConditionalGeneration"], "d_ff": 8192, "d_kv": 128, "d_model": 1024,
    "dropout_rate": 0.1, "decoder_start_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
    "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True,
    "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512, "num_decoder_layers": 32, "num_heads": 16,
    "num_layers": 32, "output_past": True, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "task_specific_params": {}, "tie_word_embeddings": False,
    "use_cache": True, "vocab_size": 256000,
}
FLAN_T5_BASE = dict(d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_heads=12, vocab_size=32128,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)
T5_SMALL = dict(d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_heads=8, vocab_size=32128,
                feed_forward_proj="relu", decoder_start_token_id=0)   # tie_word_embeddings: default True

SMALL = dict(dropout_rate=0.1, relative_attention_num_buckets=8, relative_attention_max_distance=16)
GENERATE = [{"max_new_tokens": 12}, {"max_new_tokens": 8, "num_beams": 3}]


def madlad_small(vocab: int) -> dict:
    """MADLAD's layout, small: d_kv 128 with 2 heads (inner 256 != d_model 32), pad 1 / eos 2, untied."""
    return dict(MADLAD_3B, d_model=32, d_ff=48, d_kv=128, num_heads=2, num_layers=2, num_decoder_layers=2,
                vocab_size=vocab, **SMALL)


CASES = {
    # name: (class, config, checkpoint format)
    "madlad": ("ForConditionalGeneration", None, "safetensors"),     # config filled from the tokenizer's size
    "flan": ("ForConditionalGeneration", dict(FLAN_T5_BASE, d_model=32, d_ff=40, d_kv=8, num_heads=4,
                                              num_layers=2, **SMALL), "bin"),
    "t5_original": ("ForConditionalGeneration", dict(T5_SMALL, d_model=32, d_ff=64, d_kv=8, num_heads=4,
                                                     num_layers=2, **SMALL), "safetensors"),
    "flan_encoder": ("EncoderModel", dict(FLAN_T5_BASE, d_model=24, d_ff=40, d_kv=16, num_heads=3, num_layers=2,
                                          architectures=["T5EncoderModel"], **SMALL), "safetensors"),
    # aya-101's keys and values, 2+2 layers and a narrow width; fp32 shards of 2 MB in the Hub's file names
    "aya": ("ForConditionalGeneration", dict(AYA_101, d_model=16, d_ff=40, num_heads=4, num_layers=2,
                                             num_decoder_layers=2), "sharded_safetensors"),
}


def make_inputs(cls: str, vocab: int, pad: int, eos: int, seed: int, ids: torch.Tensor | None = None) -> dict:
    """A batch of 3: full, right-padded and left-padded rows, each text ending in eos; labels with -100."""
    g = torch.Generator().manual_seed(seed)
    S, T = 9, 6
    if ids is None:
        ids = torch.randint(3, vocab, (3, S), generator=g)
        ids[0, -1], ids[1, 5], ids[2, -1] = eos, eos, eos
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        mask[2, :4] = 0
        ids = ids.masked_fill(mask == 0, pad)
    else:   # tokenized text, right-padded with the pad id
        mask = (ids != pad).long()
    inputs = {"input_ids": ids, "attention_mask": mask}
    if cls == "EncoderModel":
        return inputs
    labels = torch.randint(3, vocab, (3, T), generator=g)
    labels[1, 4:] = -100
    dec_mask = torch.ones(3, T, dtype=torch.long)
    dec_mask[1, 4:] = 0
    return dict(inputs, labels=labels, decoder_attention_mask=dec_mask)


def flatten(out) -> dict:
    flat = {}
    for key in out.keys():
        value = getattr(out, key)
        if key == "past_key_values":
            continue
        if isinstance(value, tuple):
            flat.update({f"{key}.{i}": v for i, v in enumerate(value)})
        else:
            flat[key] = value
    return flat


def assert_same(ours: dict, ref: dict, what: str) -> None:
    assert sorted(ours) == sorted(ref), f"{what}: output fields differ"
    for key in ref:
        assert ours[key].shape == ref[key].shape, f"{what}: {key} shape {ours[key].shape} vs {ref[key].shape}"
        excess = ((ours[key].float() - ref[key].float()).abs() - RTOL * ref[key].float().abs()).max().item()
        assert excess <= ATOL, f"{what}: {key} differs by {excess:.2e} beyond {RTOL:.0e} relative"


def tokenizer_folders(root: Path) -> dict:
    """Source folders the reference loads and re-saves: MADLAD-style (ours) and Flan-style (spiece.model only)."""
    madlad = write_madlad_style(root / "madlad-src", train_madlad_style(SENTENCES * 4, LANGUAGES, vocab_size=700))
    flan = root / "flan-src"
    flan.mkdir()
    proto = train_sentencepiece(SENTENCES * 4, vocab_size=600, hard_vocab_limit=False, byte_fallback=False)
    (flan / "spiece.model").write_bytes(proto.SerializeToString())
    return {"madlad": madlad, "flan": flan}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One reference run: tokenizers saved by transformers, models made, generated, counted; then a second run
    that loads the checkpoints we saved."""
    root = tmp_path_factory.mktemp("t5family")
    sources = tokenizer_folders(root)
    tok_jobs = []
    for name, src in sources.items():
        kwargs = {"extra_ids": 0} if name == "madlad" else {"model_max_length": 512}
        probe = model.MT5Tokenizer.from_pretrained(src)
        decode = [probe(t)["input_ids"] for t in (TEXTS if name == "madlad" else FLAN_TEXTS)]
        decode += [[0, 1, 2, 5, 7], list(range(len(probe) - 4, len(probe)))]
        tok_jobs.append(dict(name=f"tok-{name}", spiece=str(src / "spiece.model"), kwargs=kwargs, dir=str(root / name),
                             fast_dir=str(root / f"{name}-fast"), decode=decode,
                             texts=TEXTS if name == "madlad" else FLAN_TEXTS))
    madlad_tok = model.MT5Tokenizer.from_pretrained(sources["madlad"])
    make = []
    for i, (name, (cls, config, fmt)) in enumerate(CASES.items()):
        config = config or madlad_small(len(madlad_tok))
        pad, eos = config.get("pad_token_id", 0), config.get("eos_token_id", 1)
        ids = None
        if name == "madlad":   # real text with its <2xx> prefix, padded with MADLAD's pad id
            ids = madlad_tok(madlad_tok.with_target_language(["How are you?", "Good morning, world!",
                                                              "Machine learning"], "de"),
                             padding=True, return_tensors="pt")["input_ids"]
        inputs = root / f"{name}.inputs.safetensors"
        save_file(make_inputs(cls, config["vocab_size"], pad, eos, i, ids), inputs)
        make.append(dict(name=name, cls=cls, config=config, seed=i, dir=str(root / f"{name}.hf"),
                         max_shard_size="2MB" if fmt.startswith("sharded") else None,
                         safetensors=fmt.endswith("safetensors"), inputs=str(inputs),
                         out=str(root / f"{name}.hf.out.safetensors"),
                         generate=GENERATE if cls == "ForConditionalGeneration" else []))
    counts = [dict(name=n, config=c) for n, c in
              (("aya-101", AYA_101), ("madlad400-3b", MADLAD_3B), ("flan-t5-base", FLAN_T5_BASE),
               ("t5-small", T5_SMALL))]
    (root / "jobs.json").write_text(json.dumps({"make": make, "count": counts, "tokenizers": tok_jobs}))
    run_reference("ref_t5.py", root / "jobs.json", root / "out.json")
    result = json.loads((root / "out.json").read_text())

    ours, check = {}, []
    for case in make:
        m = getattr(model, "T5" + case["cls"]).from_pretrained(case["dir"])
        with torch.no_grad():
            ours[case["name"]] = flatten(m(**load_file(case["inputs"]), output_attentions=True,
                                           output_hidden_states=True))
        m.save_pretrained(root / f"{case['name']}.ours")
        check.append(dict(case, dir=str(root / f"{case['name']}.ours"), out=str(root / f"{case['name']}.check.st")))
    (root / "check.json").write_text(json.dumps({"check": check}))
    run_reference("ref_t5.py", root / "check.json", root / "check.out.json")
    return dict(root=root, result=result, make={c["name"]: c for c in make}, ours=ours, sources=sources,
                tokenizers={t["name"].removeprefix("tok-"): t for t in tok_jobs})


# ---------------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", list(CASES))
def test_transformers_t5_checkpoint_gives_the_same_numbers(reference, name):
    case = reference["make"][name]
    assert_same(reference["ours"][name], load_file(case["out"]), f"{name} ({CASES[name][2]})")


@pytest.mark.parametrize("name", list(CASES))
def test_our_t5_checkpoint_loads_in_transformers_with_the_same_numbers(reference, name):
    root = reference["root"]
    assert_same(reference["ours"][name], load_file(root / f"{name}.check.st"), f"{name} saved by us")


@pytest.mark.parametrize("name", [n for n, (cls, _, _) in CASES.items() if cls == "ForConditionalGeneration"])
def test_greedy_and_beam_tokens_equal_transformers(reference, name):
    case = reference["make"][name]
    m = model.load_model(case["dir"])
    assert type(m) is model.T5ForConditionalGeneration
    inputs = load_file(case["inputs"])
    for kwargs, ref in zip(GENERATE, reference["result"][name]):
        ours = m.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **kwargs)
        assert ours.tolist() == ref, f"{name} {kwargs}"


def test_madlad_special_ids_drive_generation(reference):
    """Decoding starts from decoder_start_token_id (0), stops at eos 2 and pads finished rows with 1."""
    m = model.T5ForConditionalGeneration.from_pretrained(reference["make"]["madlad"]["dir"])
    cfg = m.config
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id) == (1, 2, 0)
    assert cfg.inner_dim == 256 != cfg.d_model and not cfg.tie_word_embeddings
    gen = m.generation_config
    assert (gen.pad_token_id, gen.eos_token_id, gen.decoder_start_token_id) == (1, 2, 0)
    x = load_file(reference["make"]["madlad"]["inputs"])
    seqs = m.generate(input_ids=x["input_ids"], attention_mask=x["attention_mask"], max_new_tokens=12)
    with torch.no_grad():   # eos wins where row 0's third token would: that row stops early
        m.lm_head.weight[2] = 1.1 * m.lm_head.weight[int(seqs[0, 3])]
    seqs = m.generate(input_ids=x["input_ids"], attention_mask=x["attention_mask"], max_new_tokens=12)
    assert (seqs[:, 0] == 0).all()
    ended = [row for row in seqs.tolist() if 2 in row[1:]]
    assert ended and seqs[0, 3] == 2, seqs
    for row in ended:
        assert all(t == 1 for t in row[row.index(2, 1) + 1:])


def test_aya_layout_is_sharded_with_the_hub_names(reference):
    folder = Path(reference["make"]["aya"]["dir"])
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all(s.startswith("model-0000") and "-of-0000" in s for s in shards)
    m = model.load_model(folder)
    assert type(m) is model.T5ForConditionalGeneration and m.config.model_type == "t5"
    assert m.config.extra["output_past"] is True and m.config.vocab_size == 250112
    info = model.T5ForConditionalGeneration.from_pretrained(folder, output_loading_info=True)[1]
    assert info.source_files == [str(folder / s) for s in shards]


def test_parameter_counts_of_published_shapes_equal_transformers(reference):
    ours = {}
    for name, config in (("aya-101", AYA_101), ("madlad400-3b", MADLAD_3B), ("flan-t5-base", FLAN_T5_BASE),
                         ("t5-small", T5_SMALL)):
        cfg = model.T5Config.from_dict(config)
        with torch.device("meta"):
            ours[name] = model.T5ForConditionalGeneration(cfg).num_parameters()
        assert cfg.num_parameters() == ours[name], name
    assert ours == {k: reference["result"][k] for k in ours}
    assert 12.9e9 < ours["aya-101"] < 13.0e9 and ours["t5-small"] == 60_506_624


def test_encoder_model_and_load_model_pick_the_class_from_the_checkpoint(reference):
    enc = model.load_model(reference["make"]["flan_encoder"]["dir"])
    assert type(enc) is model.T5EncoderModel
    gen = model.load_model(reference["make"]["flan"]["dir"], task="encoder")
    assert type(gen) is model.T5EncoderModel
    head = model.load_model(reference["make"]["flan"]["dir"], task="classification")
    assert type(head) is model.T5ForSequenceClassification and type(head.transformer) is model.T5Model


# ------------------------------------------------------------------------------------------------ config
def test_t5_config_defaults_are_transformers_t5_config():
    c = model.T5Config()
    assert (c.vocab_size, c.d_model, c.d_ff, c.num_layers, c.num_heads, c.feed_forward_proj) == \
        (32128, 512, 2048, 6, 8, "relu")
    assert c.tie_word_embeddings and c.dense_act_fn == "relu" and not c.per_layer_bias
    assert model.T5Config(feed_forward_proj="gated-gelu").dense_act_fn == "gelu_new"
    assert c.to_dict()["model_type"] == "t5"


def test_tied_original_t5_scales_logits_and_untied_do_not():
    torch.manual_seed(0)
    tied = model.T5ForConditionalGeneration(model.T5Config(**dict(CASES["t5_original"][1], vocab_size=50))).eval()
    assert tied.lm_head.weight is tied.shared.weight
    states = torch.randn(1, 2, 32)
    assert torch.allclose(tied.logits(states), states @ tied.shared.weight.T * 32 ** -0.5)


def test_mt5_and_t5_classes_read_each_others_configs(reference, tmp_path):
    """Fine-tunes of mT5 saved as `model_type: t5` exist: the MT5 class takes a t5 checkpoint (same network)."""
    folder = reference["make"]["flan"]["dir"]
    m = model.MT5ForConditionalGeneration.from_pretrained(folder)
    t = model.T5ForConditionalGeneration.from_pretrained(folder)
    x = load_file(reference["make"]["flan"]["inputs"])
    with torch.no_grad():
        assert torch.equal(m(**x).logits, t(**x).logits)
    assert m.config.model_type == "mt5" and t.config.model_type == "t5"


def test_wrong_family_and_unknown_model_type_are_clear(reference, tmp_path):
    umt5 = model.UMT5ForConditionalGeneration(model.UMT5Config(vocab_size=40, d_model=8, d_ff=8, d_kv=4,
                                                               num_heads=2, num_layers=1))
    umt5.save_pretrained(tmp_path / "umt5")
    with pytest.raises(ValueError, match="umt5 checkpoint but T5ForConditionalGeneration.*UMT5ForConditionalGen"):
        model.T5ForConditionalGeneration.from_pretrained(tmp_path / "umt5")
    bart = tmp_path / "bart"
    shutil.copytree(reference["make"]["flan"]["dir"], bart)
    config = json.loads((bart / "config.json").read_text())
    (bart / "config.json").write_text(json.dumps({**config, "model_type": "bart",
                                                  "architectures": ["BartForConditionalGeneration"]}))
    for load in (model.load_model, model.T5ForConditionalGeneration.from_pretrained):
        with pytest.raises(ValueError, match="model_type 'bart', not an mT5/UMT5 model or a T5.*mt5, umt5 or t5"):
            load(bart)


# -------------------------------------------------------------------------------------------- tokenizers
def test_madlad_tokenizer_equals_transformers(reference):
    ref = reference["result"]["tok-madlad"]
    job = reference["tokenizers"]["madlad"]
    for folder in (reference["sources"]["madlad"], job["dir"]):   # ours as written, and as transformers saved it
        tok = model.MT5Tokenizer.from_pretrained(folder)
        assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0) == \
            (ref["pad"], ref["eos"], ref["unk"])
        assert len(tok) == ref["len"]
        assert [tok(t)["input_ids"] for t in TEXTS] == ref["slow"]["ids"]
        assert [tok.decode(ids) for ids in job["decode"]] == ref["slow"]["decode"]
        assert [tok.decode(ids, skip_special_tokens=True) for ids in job["decode"]] == ref["slow"]["decode_skip"]
        assert all(row[-1] == 2 for row in ref["slow"]["ids"])


def test_flan_tokenizer_from_spiece_model_and_from_tokenizer_json(reference, tmp_path):
    ref = reference["result"]["tok-flan"]
    job = reference["tokenizers"]["flan"]
    slow = model.MT5Tokenizer.from_pretrained(job["dir"])
    assert type(slow) is model.MT5Tokenizer and len(slow) == ref["len"]
    assert [slow(t)["input_ids"] for t in FLAN_TEXTS] == ref["slow"]["ids"]
    assert [slow.decode(ids) for ids in job["decode"]] == ref["slow"]["decode"]
    assert [slow.decode(ids, skip_special_tokens=True) for ids in job["decode"]] == ref["slow"]["decode_skip"]
    assert slow.sentinel_id(0) == len(slow) - 1 and slow.sentinel_id(99) == len(slow) - 100
    assert slow.model_max_length == 512
    only_json = tmp_path / "flan-json"
    shutil.copytree(job["fast_dir"], only_json)
    (only_json / "spiece.model").unlink(missing_ok=True)
    assert (only_json / "tokenizer.json").is_file()
    fast = model.MT5Tokenizer.from_pretrained(only_json)
    assert type(fast) is model.MT5TokenizerFast
    assert [fast(t)["input_ids"] for t in FLAN_TEXTS] == ref["fast"]["ids"]
    assert [fast.decode(ids) for ids in job["decode"]] == ref["fast"]["decode"]
    assert fast.sentinel_id(0) == slow.sentinel_id(0) and fast.sentinel_id(99) == slow.sentinel_id(99)


def test_with_target_language_prefixes_the_token(reference):
    tok = model.MT5Tokenizer.from_pretrained(reference["sources"]["madlad"])
    codes = tok.language_tokens()
    assert sorted(codes) == sorted(LANGUAGES)
    assert tok.with_target_language("How are you?", "de") == "<2de> How are you?"
    assert tok.with_target_language(["a", "b"], "<2sr_Latn>") == ["<2sr_Latn> a", "<2sr_Latn> b"]
    ids = tok(tok.with_target_language("How are you?", "fr"))["input_ids"]
    assert codes["fr"] in ids[:2] and ids[-1] == 2


def test_unknown_target_language_is_refused_with_the_way_to_find_codes(reference):
    tok = model.MT5Tokenizer.from_pretrained(reference["sources"]["madlad"])
    with pytest.raises(ValueError, match=r"'dee' is not a target language.*did you mean de.*language_tokens\(\)"):
        tok.with_target_language("Hallo", "dee")
    flan = model.MT5Tokenizer.from_pretrained(reference["tokenizers"]["flan"]["dir"])
    assert flan.language_tokens() == {}
    with pytest.raises(ValueError, match="no <2xx> target-language tokens.*Translate to German"):
        flan.with_target_language("Hello", "de")
