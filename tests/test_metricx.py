"""MetricX-23/24 on our mT5 (issue 25, part 1): `MT5ForRegression` and `model.metricx`'s scorer.

The reference is MetricX as it runs (google-research/metricx, metricx23/models.py and predict.py): transformers
4.57's MT5ForConditionalGeneration in `.venv-ref`, decoder input 0, one step, logit 250089, clamped to [0, 25], on
the same token ids in one right-padded batch; ours run sorted by length in padded batches. The checkpoints are
random, built here in the Hub's MetricX layout (`pytorch_model-0000N-of-0000M.bin` shards with an index,
`architectures: ["MT5ForRegression"]`, embed_tokens copies): the large shape (metricx-24-hybrid-large, fp32 on
disk) and the xl shape (metricx-24-hybrid-xl-bfloat16, bf16 on disk), each cut to 2+2 layers, with mT5's real
vocabulary (250112) so that token 250089 exists. Their lm_head row 250089 is set so that the test rows score
inside (0, 25), where the clamp hides nothing. A narrow checkpoint (d_model 64, full vocabulary, safetensors)
checks MetricX's tokenization end to end through a 1536-token cut, and the scorer's contract (order, reports,
refusals, loading options).
"""
import gc
import itertools
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch

import model
from model.hub import CheckpointError
from model.metricx import (
    MAX_SCORE,
    SCORE_TOKEN_ID,
    MT5ForRegression,
    encode_text,
    iter_scores,
    metricx_input,
    score,
    score_ids,
)
from model.modeling import init_parameter
from model.tiny import train_sentencepiece, write_mt5_style
from refutil import run_reference

sys.path.insert(0, str(Path(__file__).parent / "reference"))
from spm_util import SENTENCES  # noqa: E402

FP32_ATOL = 1e-4
# bf16 cannot meet 1e-2: the reference's score is itself a bf16 logit (steps of 1/16 from 8 to 16, 1/8 above),
# and two bf16 runs of one network, ours and transformers', each land up to ~0.15 from the fp32 score here, on
# either side of it (0.27 apart at worst). So ours is held within 0.5 (2% of the 0..25 scale) of transformers'
# bf16, and, the sharper check, within 1.5x transformers' own bf16 error (plus one bf16 step) of the fp32 score.
BF16_ATOL, BF16_NOISIER, BF16_ULP = 0.5, 1.5, 1 / 16
# Sorted, padded batches against one row at a time, same model: fp32 matrix products add in another order when
# the batch's shape changes (the encoder states move by ~1e-6), and the test models' sharp cross-attention carries
# that to ~1.5e-5 on scores of 3..22 (~16 fp32 steps).
ORDER_ATOL = 2e-5
VOCAB = 250112

# google/metricx-24-hybrid-large-v2p6's config.json: mt5-large's shape, MetricX's architecture name
METRICX_LARGE = {
    "architectures": ["MT5ForRegression"], "d_ff": 2816, "d_kv": 64, "d_model": 1024, "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
    "model_type": "mt5", "num_decoder_layers": 24, "num_heads": 16, "num_layers": 24, "output_past": True,
    "pad_token_id": 0, "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False, "tokenizer_class": "T5Tokenizer", "torch_dtype": "float32",
    "transformers_version": "4.38.2", "use_cache": True, "vocab_size": VOCAB,
}
SHAPES = {   # name: (config, dtype on disk)
    "large": (dict(METRICX_LARGE, num_layers=2, num_decoder_layers=2), torch.float32),
    "xl": (dict(METRICX_LARGE, d_model=2048, d_ff=5120, num_heads=32, num_layers=2, num_decoder_layers=2,
                torch_dtype="bfloat16"), torch.bfloat16),
}
NARROW = dict(METRICX_LARGE, d_model=64, d_ff=96, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2)
DTYPES = ("float32", "bfloat16")

SEGMENTS = [   # (source, hypothesis, reference)
    ("Der Hund bellt.", "The dog barks.", "The dog is barking."),
    ("Hallo Welt!", "Hello world!", "Hello, world!"),
    ("Привет, мир!", "Hello, world!", "Hi, world!"),
]
MODES = {"reference": False, "qe": True}   # mode -> qe
LONG = " ".join(SENTENCES * 12)            # well over 1536 tokens


def rows_of(qe: bool) -> list[dict]:
    return [dict(source=s, hypothesis=h, **({} if qe else {"reference": r})) for s, h, r in SEGMENTS]


# ------------------------------------------------------------------------------------------------ checkpoints
def random_state(config: dict, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """Random weights in MetricX's keys. The (250112, D) matrices tile 4093 random rows (distinct neighbours,
    seconds instead of a minute of sampling); norms are 1 +- 0.1 and position biases N(0, 1), as large as a
    trained model's, so that both matter."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.MT5Config.from_dict(config)
    with torch.device("meta"):
        shapes = {k: p.shape for k, p in MT5ForRegression(cfg).named_parameters()}
    state = {}
    for key, shape in shapes.items():
        if key in ("shared.weight", "lm_head.weight"):
            block = torch.randn(4093, shape[1], generator=g).to(dtype)
            full = torch.empty(shape, dtype=dtype)
            for start in range(0, shape[0], len(block)):
                full[start:start + len(block)] = block[:shape[0] - start]
            state[key] = full
        else:
            t = torch.empty(shape)
            if "layer_norm" in key:
                t = 1 + 0.1 * torch.randn(shape, generator=g)
            elif "relative_attention_bias" in key:
                t = torch.randn(shape, generator=g)
            else:
                init_parameter(cfg, key, t, g)
            if "EncDecAttention.q." in key or "EncDecAttention.o." in key:
                t *= 3   # sharper, stronger cross-attention: the decoder state then depends more on the input
            state[key] = t.to(dtype)
    return state


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return ids, mask


@torch.no_grad()
def calibrate(state: dict, config: dict, rows: list[list[int]], seed: int) -> None:
    """Sets lm_head row 250089 so that `rows` score across (3, 22): a random row plus the least change, in the
    span of the rows' decoder states, that moves their logits there. The states come from an fp32 copy whose
    vocabulary stops above the rows' ids (fast, whatever the checkpoint's dtype)."""
    rows_vocab = max(map(max, rows)) + 1
    small = model.MT5Config.from_dict(dict(config, vocab_size=rows_vocab))
    with torch.device("meta"):
        m = model.MT5Model(small)
    m.load_state_dict({k: (v[:rows_vocab] if k == "shared.weight" else v).float() for k, v in state.items()
                       if k != "lm_head.weight"}, assign=True)
    m.eval()
    ids, mask = padded(rows)
    h = m.decode(torch.zeros((len(rows), 1), dtype=torch.long), m.encode(ids, mask).last_hidden_state,
                 mask).last_hidden_state[:, 0].double()                                     # (B, D)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(h.shape[1], generator=g, dtype=torch.double)
    u *= 2.0 / (h @ u).std()
    targets = torch.linspace(3, 22, len(rows), dtype=torch.double)[torch.randperm(len(rows), generator=g)]
    gram = h @ h.T
    w = u + h.T @ torch.linalg.solve(gram + 1e-6 * gram.trace() / len(rows) * torch.eye(len(rows)), targets - h @ u)
    state["lm_head.weight"][SCORE_TOKEN_ID] = w.to(state["lm_head.weight"].dtype)


def write_bin_shards(folder: Path, state: dict, config: dict) -> Path:
    """The Hub's MetricX layout: two `pytorch_model-0000N-of-00002.bin` shards and their index, the
    embed_tokens copies beside `shared` (one storage, as transformers saves them), config.json."""
    folder.mkdir(parents=True)
    first = {"shared.weight": state["shared.weight"], "encoder.embed_tokens.weight": state["shared.weight"],
             "decoder.embed_tokens.weight": state["shared.weight"]}
    first.update({k: v for k, v in state.items() if k.startswith("encoder.")})
    second = {k: v for k, v in state.items() if k not in first}
    weight_map, total = {}, 0
    for i, shard in enumerate((first, second), 1):
        name = f"pytorch_model-{i:05d}-of-00002.bin"
        torch.save(shard, folder / name)
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(t.numel() * t.element_size() for k, t in shard.items() if "embed_tokens" not in k)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def tokenizer_folder(root: Path) -> Path:
    texts = SENTENCES * 4 + [metricx_input(*s) for s in SEGMENTS] * 8
    return write_mt5_style(root / "tokenizer", train_sentencepiece(texts, vocab_size=900, hard_vocab_limit=False))


def narrow_checkpoint(root: Path, rows: list[list[int]]) -> Path:
    """The narrow checkpoint, saved by us (model.safetensors, architectures MT5ForRegression)."""
    state = random_state(NARROW, torch.float32, seed=7)
    calibrate(state, NARROW, rows, seed=7)
    with torch.device("meta"):
        m = MT5ForRegression(model.MT5Config.from_dict(NARROW))
    m.load_state_dict(state, assign=True)
    m.save_pretrained(root / "narrow")
    return root / "narrow"


def texts_of(qe: bool) -> list[str]:
    return [metricx_input(s, h, None if qe else r) for s, h, r in SEGMENTS]


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """The tokenizer and the narrow checkpoint (safetensors, saved by us), with the rows' ids."""
    root = tmp_path_factory.mktemp("metricx-narrow")
    tok_dir = tokenizer_folder(root)
    tok = model.MT5Tokenizer.from_pretrained(tok_dir)
    rows = [encode_text(tok, t, 1536)[0] for qe in MODES.values() for t in texts_of(qe)]
    return dict(root=root, tok_dir=tok_dir, tok=tok, rows=rows, dir=narrow_checkpoint(root, rows),
                model=MT5ForRegression.from_pretrained(root / "narrow"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, narrow):
    """The large and xl checkpoints written in MetricX's layout, scored by the reference (one padded batch) in
    fp32 and bf16, and by us (score(): sorted, padded batches of 2); MetricX's tokenization of long and boundary
    texts, and the narrow model's reference scores on those ids."""
    root = scratch_folder(tmp_path_factory)
    try:
        yield reference_run(root, narrow)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def scratch_folder(tmp_path_factory) -> Path:
    """Where the 2.5 GB checkpoints go: memory (/dev/shm) when it has room, since writing them to this machine's
    disk takes longer than the rest of the file; else the test's tmp folder. A run killed before its cleanup
    leaves memory taken: the next run removes such folders once they are an hour old."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return tmp_path_factory.mktemp("metricx")
    for stale in shm.glob("metricx-test-*"):
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    if shutil.disk_usage(shm).free > 12 * 2 ** 30:
        return Path(tempfile.mkdtemp(prefix="metricx-test-", dir=shm))
    return tmp_path_factory.mktemp("metricx")


def reference_run(root: Path, narrow: dict) -> dict:
    tok, rows = narrow["tok"], narrow["rows"]
    jobs = {"score": [], "tokenize": []}
    dirs = {}
    for seed, (name, (config, dtype)) in enumerate(SHAPES.items(), 1):
        state = random_state(config, dtype, seed)
        calibrate(state, config, rows, seed)
        dirs[name] = write_bin_shards(root / name, state, config)
        del state
        jobs["score"] += [dict(name=f"{name}-{dt}", dir=str(dirs[name]), dtype=dt, rows=rows) for dt in DTYPES]
    boundary = len(tok(BOUNDARY_TEXTS[1])["input_ids"])   # the second text fills max_length exactly
    jobs["tokenize"] = [dict(name="tok-1536", dir=str(narrow["tok_dir"]), texts=LONG_TEXTS, max_length=1536),
                        dict(name="tok-boundary", dir=str(narrow["tok_dir"]), texts=BOUNDARY_TEXTS,
                             max_length=boundary)]
    jobs["score"].append(dict(name="narrow-1536", dir=str(narrow["dir"]), dtype="float32", rows_from="tok-1536"))
    (root / "jobs.json").write_text(json.dumps(jobs))
    run_reference("ref_metricx.py", root / "jobs.json", root / "out.json")
    result = json.loads((root / "out.json").read_text())

    ours = {}
    for name, folder in dirs.items():
        for dt in DTYPES:
            m = MT5ForRegression.from_pretrained(folder, dtype=dt)
            ours[f"{name}-{dt}"] = {mode: score(m, tok, rows_of(qe), qe=qe, batch_size=2).scores
                                    for mode, qe in MODES.items()}
            del m
            gc.collect()
        shutil.rmtree(folder)   # gigabytes: gone as soon as both sides are done with them
    return dict(result=result, ours=ours, boundary=boundary)


# Texts for MetricX's tokenization: a reference-mode row far over 1536 tokens, a QE one, short ones; and three
# texts around a cut (shorter than, exactly at and over max_length).
LONG_TEXTS = [metricx_input("Der Hund bellt.", LONG, "The dog barks."), metricx_input(LONG, "The dog barks."),
              texts_of(False)[0], texts_of(True)[1]]
BOUNDARY_TEXTS = [metricx_input("Hallo", "Hello"), metricx_input("Hallo Welt", "Hello world"),
                  metricx_input("Hallo Welt!", "Hello world, how are you?")]


# ---------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_scores_equal_metricx_on_transformers(reference, shape, dtype, mode):
    """score() (sorted, padded batches) equals MetricX's class on transformers 4.57: within 1e-4 in fp32; in bf16
    within 0.5 of transformers' bf16, and about as far from the fp32 score as transformers' bf16 is."""
    n = len(SEGMENTS)
    part = slice(0, n) if mode == "reference" else slice(n, 2 * n)
    ref = reference["result"][f"{shape}-{dtype}"]["logits"][part]
    exact = reference["result"][f"{shape}-float32"]["logits"][part]
    assert all(1 < v < MAX_SCORE - 1 for v in exact), f"the clamp would hide differences: {exact}"
    ours = reference["ours"][f"{shape}-{dtype}"][mode]
    assert reference["result"][f"{shape}-{dtype}"]["dtypes"] == [f"torch.{dtype}"]
    if dtype == "float32":
        assert ours == pytest.approx(ref, abs=FP32_ATOL, rel=0), f"{shape} {mode}"
        return
    assert ours == pytest.approx(ref, abs=BF16_ATOL, rel=0), f"{shape} {mode}"
    ours_error = max(abs(a - b) for a, b in zip(ours, exact))
    ref_error = max(abs(a - b) for a, b in zip(ref, exact))
    assert ours_error <= BF16_NOISIER * ref_error + BF16_ULP, f"{shape} {mode}: ours {ours} transformers {ref}"


def test_tokenization_and_the_1536_token_cut_equal_metricx(reference, narrow):
    """MetricX's predict.py tokenization (truncation at max_length keeping </s>, then </s> removed) and its score
    of a row far over 1536 tokens, end to end through score()."""
    tok = narrow["tok"]
    for name, texts, limit in (("tok-1536", LONG_TEXTS, 1536), ("tok-boundary", BOUNDARY_TEXTS,
                                                                   reference["boundary"])):
        ours = [encode_text(tok, t, limit) for t in texts]
        assert [ids for ids, _ in ours] == reference["result"][name], name
        assert [cut for _, cut in ours] == [len(tok(t)["input_ids"]) > limit for t in texts]
    assert [len(ids) for ids in reference["result"]["tok-1536"][:2]] == [1535, 1535]
    assert [cut for _, cut in (encode_text(tok, t, reference["boundary"]) for t in BOUNDARY_TEXTS)] == \
        [False, False, True]
    rows = [("Der Hund bellt.", LONG, "The dog barks."), (LONG, "The dog barks.", None), SEGMENTS[0],
            (SEGMENTS[1][0], SEGMENTS[1][1], None)]
    with pytest.warns(UserWarning, match=r"1 row\(s\) longer than 1536 tokens were cut.*\(rows 0, counting from 0"):
        ref_mode = score(narrow["model"], tok, [rows[0], rows[2]], batch_size=2)
    with pytest.warns(UserWarning, match=r"1 row\(s\) longer than 1536 tokens were cut"):
        qe_mode = score(narrow["model"], tok, [rows[1], rows[3]], qe=True, batch_size=2)
    ours = [ref_mode.scores[0], qe_mode.scores[0], ref_mode.scores[1], qe_mode.scores[1]]
    expected = [min(max(v, 0.0), MAX_SCORE) for v in reference["result"]["narrow-1536"]["logits"]]
    assert ours == pytest.approx(expected, abs=FP32_ATOL)
    assert ref_mode.truncated == [0] and qe_mode.truncated == [0] and ref_mode.tokens[0] == 1535


# ------------------------------------------------------------------------------------------ loading and checks
def test_bin_shard_layout_loads_by_its_architecture_name(narrow, tmp_path):
    folder = write_bin_shards(tmp_path / "bin", narrow["model"].state_dict(), NARROW)
    loaded, info = model.load_model(folder, output_loading_info=True)
    assert type(loaded) is MT5ForRegression and loaded.config.architectures == ["MT5ForRegression"]
    assert info.source_files == [str(folder / f"pytorch_model-0000{i}-of-00002.bin") for i in (1, 2)]
    assert info.missing_keys == [] and info.unexpected_keys == []
    ids, mask = padded(narrow["rows"])
    assert torch.equal(loaded.predict(ids, mask), narrow["model"].predict(ids, mask))
    assert type(model.load_model(narrow["dir"], task="metricx")) is MT5ForRegression
    assert model.model_class("t5", "regression") is MT5ForRegression


def test_what_is_not_a_metricx_checkpoint_is_named(tmp_path):
    small = dict(NARROW, d_model=16, d_ff=24, d_kv=8, num_heads=2)
    model.MT5Model(model.MT5Config.from_dict(small)).save_pretrained(tmp_path / "plain")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the loader's "lm_head initialised at random" comes first
        with pytest.raises(CheckpointError, match="no lm_head.weight, so it is not a MetricX checkpoint"):
            MT5ForRegression.from_pretrained(tmp_path / "plain")
    model.MT5ForConditionalGeneration(model.MT5Config.from_dict(small)).save_pretrained(tmp_path / "generation")
    with pytest.warns(UserWarning, match=r"architectures=\['MT5ForConditionalGeneration'\], not MT5ForRegression"):
        MT5ForRegression.from_pretrained(tmp_path / "generation")
    with pytest.raises(ValueError, match="logit of token 250089 .* but vocab_size is 32128"):
        MT5ForRegression(model.MT5Config.from_dict(dict(small, vocab_size=32128)))
    with pytest.raises(ValueError, match=r"MetricX \(MT5ForRegression\) is an mT5 model; this checkpoint is umt5"):
        model.model_class("umt5", "metricx")


def test_quantized_bf16_and_placed_models_score_as_the_full_head_does(narrow):
    """Every loading option of the other classes gives the score MT5ForConditionalGeneration, loaded from the same
    checkpoint with the same options, gives as logit 250089 (a quantized head, quantize_embeddings=True, is run
    whole); 8-bit stays near fp32 (int4 on this narrow random model does not, and is not asked to)."""
    ids, mask = padded(narrow["rows"])
    exact = narrow["model"].predict(ids, mask)
    start = torch.zeros((len(ids), 1), dtype=torch.long)
    cases = [  # options, the head's class, tolerance against the full head (bf16: its logit is rounded to bf16)
        ({"device_map": "cpu"}, "Linear", FP32_ATOL), ({"dtype": "bfloat16"}, "Linear", 0.07),
        ({"load_in_8bit": True}, "Linear", FP32_ATOL),
        ({"load_in_8bit": True, "quantize_embeddings": True}, "Int8Linear", FP32_ATOL),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "int4"}, "Linear", FP32_ATOL)]
    for options, head, tolerance in cases:
        ours = MT5ForRegression.from_pretrained(narrow["dir"], **options)
        full = model.MT5ForConditionalGeneration.from_pretrained(narrow["dir"], **options)
        assert type(ours.lm_head).__name__ == head, options
        got = ours.predict(ids, mask)
        with torch.no_grad():
            logit = full(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits[:, 0, SCORE_TOKEN_ID]
        assert got.dtype == torch.float32, options
        assert got.tolist() == pytest.approx(logit.float().clamp(0, MAX_SCORE).tolist(), abs=tolerance), options
        if "load_in_8bit" in options:   # within 4% of the scale on this narrow, sharp random model
            assert (got - exact).abs().max() < 1.0, options


# ------------------------------------------------------------------------------------------------ the model
def test_forward_is_metricx_forward(narrow):
    m = narrow["model"]
    ids, mask = padded(narrow["rows"][:4])
    labels = torch.tensor([1.0, 5.0, 10.0, 30.0])
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=mask, labels=labels)
        assert out.keys() == ["loss", "predictions"] and torch.equal(out.predictions, m.predict(ids, mask))
        assert out.loss.item() == pytest.approx(torch.nn.functional.mse_loss(out.predictions, labels).item())
        loss, predictions = m(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
        assert torch.equal(predictions, out.predictions)
        embeds = m(inputs_embeds=m.shared(ids), attention_mask=mask).predictions
        assert torch.allclose(embeds, out.predictions, atol=1e-6)
        encoded = m(attention_mask=mask, encoder_outputs=m.encode(ids, mask)).predictions
        assert torch.equal(encoded, out.predictions)
        with pytest.raises(ValueError, match="pass input_ids"):
            m(attention_mask=mask)
        row = m.lm_head.weight[SCORE_TOKEN_ID].clone()
        try:
            for factor, bound in ((100.0, MAX_SCORE), (-100.0, 0.0)):   # the clamp, both ends
                m.lm_head.weight[SCORE_TOKEN_ID] = factor * row
                assert m.predict(ids, mask).tolist() == [bound] * len(ids)
                assert m(input_ids=ids, attention_mask=mask).predictions.tolist() == [bound] * len(ids)
        finally:
            m.lm_head.weight[SCORE_TOKEN_ID] = row


@pytest.mark.parametrize("tied", [False, True])
def test_score_logit_is_the_lm_head_logit_scaled_only_when_tied(narrow, tied):
    """The one-row dot product equals the full head's logit 250089 after one step from token 0."""
    cfg = model.MT5Config.from_dict(dict(NARROW, d_model=16, d_ff=24, d_kv=8, num_heads=2, tie_word_embeddings=tied))
    torch.manual_seed(3)
    reg = MT5ForRegression(cfg).eval()
    assert (reg.lm_head.weight is reg.shared.weight) == tied
    gen = model.MT5ForConditionalGeneration(cfg).eval()
    gen.load_state_dict(reg.state_dict())
    ids, mask = padded(narrow["rows"])
    with torch.no_grad():
        full = gen(input_ids=ids, attention_mask=mask,
                   decoder_input_ids=torch.zeros((len(ids), 1), dtype=torch.long)).logits[:, 0, SCORE_TOKEN_ID]
        assert torch.allclose(reg.score_logits(ids, mask), full, atol=1e-5, rtol=1e-6)


# ----------------------------------------------------------------------------------------------- the scorer
def test_inputs_are_metricx_24_and_23_texts(narrow):
    assert metricx_input("S", "H", "R") == "source: S candidate: H reference: R"
    assert metricx_input("S", "H") == "source: S candidate: H"
    assert metricx_input("S", "H", "R", version=23) == "candidate: H reference: R"
    assert metricx_input("S", "H", version=23) == "candidate: H source: S"
    m, tok = narrow["model"], narrow["tok"]
    as_dicts = score(m, tok, rows_of(False)).scores
    assert score(m, tok, SEGMENTS).scores == as_dicts
    assert score(m, tok, [(s, h) for s, h, _ in SEGMENTS], qe=True).scores == score(m, tok, rows_of(True),
                                                                                   qe=True).scores
    v23 = score(m, tok, [dict(hypothesis=h, reference=r) for _, h, r in SEGMENTS], version=23).scores
    ids = [encode_text(tok, metricx_input(None, h, r, version=23), 1536)[0] for _, h, r in SEGMENTS]
    assert v23 == pytest.approx(score_ids(m, ids, batch_size=1), abs=ORDER_ATOL)


def test_empty_hypothesis_and_other_bad_rows_are_refused_by_row(narrow):
    m, tok = narrow["model"], narrow["tok"]
    for empty in ("", "   ", None):
        rows = rows_of(False)
        rows[1] = dict(rows[1], hypothesis=empty)
        with pytest.raises(ValueError, match=r"row 1 \(counting from 0\) has an empty hypothesis"):
            score(m, tok, rows)
    with pytest.raises(ValueError, match=r"row 0 \(counting from 0\) has an empty hypothesis"):
        score(m, tok, [("Hallo", "")], qe=True)
    with pytest.raises(ValueError, match=r"row 2 \(counting from 0\) has no reference: pass qe=True"):
        score(m, tok, rows_of(False)[:2] + rows_of(True)[2:])
    with pytest.raises(ValueError, match=r"row 0 \(counting from 0\) has no source"):
        score(m, tok, [dict(hypothesis="Hi", reference="Hello")])
    with pytest.raises(TypeError, match=r"row 1 \(counting from 0\) is a int"):
        score(m, tok, [SEGMENTS[0], 5])
    with pytest.raises(ValueError, match=r"version must be one of \(23, 24\)"):
        score(m, tok, SEGMENTS, version=22)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        score(m, tok, SEGMENTS, batch_size=0)
    with pytest.raises(ValueError, match="did not end the text with </s>"):
        score(m, WithoutEos(tok), SEGMENTS)
    # a stream is checked chunk by chunk: rows before the bad chunk are already out
    stream = iter_scores(m, tok, rows_of(False) + [dict(rows_of(False)[0], hypothesis="")], chunk_rows=3)
    assert [r.index for r in itertools.islice(stream, 3)] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"row 3 \(counting from 0\) has an empty hypothesis"):
        next(stream)


class WithoutEos:
    """A tokenizer whose encodings lack the final </s>."""

    def __init__(self, tok):
        self.tok, self.eos_token_id = tok, tok.eos_token_id

    def __call__(self, text: str) -> dict:
        return {"input_ids": self.tok(text)["input_ids"][:-1]}


def test_truncation_is_reported(narrow):
    m, tok = narrow["model"], narrow["tok"]
    texts = texts_of(False)
    lengths = [len(tok(t)["input_ids"]) for t in texts]           # with </s>
    limit = sorted(lengths)[1]                                     # the shortest two fit, the longest is cut
    with pytest.warns(UserWarning, match=rf"1 row\(s\) longer than {limit} tokens were cut"):
        result = score(m, tok, rows_of(False), max_input_tokens=limit)
    assert result.truncated == [i for i, n in enumerate(lengths) if n > limit] and len(result.truncated) == 1
    assert result.tokens == [min(n, limit) - 1 for n in lengths]
    cut = result.truncated[0]
    ids = tok(texts[cut])["input_ids"][:limit - 1]
    assert result.scores[cut] == pytest.approx(score_ids(m, [ids])[0], abs=ORDER_ATOL)
    assert [r.truncated for r in iter_scores(m, tok, rows_of(False), max_input_tokens=limit)] == \
        [n > limit for n in lengths]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                             # nothing cut, nothing said
        assert score(m, tok, rows_of(False)).truncated == []


def test_sorted_batches_return_input_order(narrow):
    """Length-sorted, padded batches and chunked streaming give each row the score it has alone."""
    m, tok = narrow["model"], narrow["tok"]
    rows = [dict(source=s, hypothesis=h, reference=r) for s, _, r in SEGMENTS for _, h, _ in SEGMENTS]
    one = score(m, tok, rows, batch_size=1).scores
    assert len(set(one)) == len(rows)
    assert score(m, tok, rows, batch_size=4, chunk_rows=5).scores == pytest.approx(one, abs=ORDER_ATOL)
    assert score(m, tok, rows, batch_size=64).scores == pytest.approx(one, abs=ORDER_ATOL)
    endless = iter_scores(m, tok, itertools.cycle(rows), batch_size=4, chunk_rows=4)   # an unending stream
    first = list(itertools.islice(endless, 12))
    assert [r.index for r in first] == list(range(12))
    assert [r.score for r in first] == pytest.approx(one + one[:3], abs=ORDER_ATOL)
