"""Loading checkpoints: cross-class loading, Hub cache resolution, config quirks, and every kind of bad input."""
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from model import (CheckpointError, CheckpointNotFoundError, MT5Config, MT5ForConditionalGeneration,
                   MT5ForSequenceClassification, MT5ForTokenClassification, MT5Model, UMT5Config,
                   UMT5ForConditionalGeneration)

TINY = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=3)


def tiny(cls=MT5ForConditionalGeneration, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg_cls = UMT5Config if cls.__name__.startswith("UMT5") else MT5Config
    return cls(cfg_cls(**{**TINY, **overrides})).eval()


@pytest.fixture
def saved(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path / "ckpt")
    return m, tmp_path / "ckpt"


def ids(batch=2, length=7, vocab=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (batch, length), generator=g)
    x[:, -1] = 1
    return x


def same_state(a: torch.nn.Module, b: torch.nn.Module, prefix_a="", prefix_b=""):
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k[len(prefix_b):] for k in sb if k.startswith(prefix_b) and not k.startswith(prefix_b + "lm_head")]
    for k in keys:
        if prefix_a + k in sa:
            assert torch.equal(sa[prefix_a + k], sb[prefix_b + k]), k
    return keys


# -- cross-class loading ------------------------------------------------------------------------------------
def test_plain_checkpoint_loads_into_head_model_and_reports_new_head(saved):
    m, path = saved
    with pytest.warns(UserWarning, match="classification_head.*initialised at random"):
        head, info = MT5ForSequenceClassification.from_pretrained(path, output_loading_info=True)
    assert sorted(info.missing_keys) == sorted(k for k in head.state_dict() if k.startswith("classification_head"))
    assert info.unexpected_keys == ["lm_head.weight"]
    assert torch.equal(head.transformer.shared.weight, m.shared.weight)
    assert torch.equal(head.transformer.decoder.block[1].layer[2].DenseReluDense.wo.weight,
                       m.decoder.block[1].layer[2].DenseReluDense.wo.weight)
    assert head.classification_head.dense.weight.std() > 0  # really initialised, not left empty
    out = head(input_ids=ids())
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()


def test_head_checkpoint_loads_into_plain_model(tmp_path):
    head = tiny(MT5ForSequenceClassification)
    head.save_pretrained(tmp_path)
    keys = json.loads(json.dumps(list(load_file(tmp_path / "model.safetensors"))))
    assert all(k.startswith(("transformer.", "classification_head.")) for k in keys)  # the Hub's layout
    plain, info = MT5Model.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info.unexpected_keys) == {k for k in keys if k.startswith("classification_head")}
    assert torch.equal(plain.encoder.block[0].layer[0].SelfAttention.q.weight,
                       head.transformer.encoder.block[0].layer[0].SelfAttention.q.weight)


def test_seq2seq_checkpoint_loads_into_encoder_only_head(saved):
    m, path = saved
    with pytest.warns(UserWarning, match="classifier"):
        tagger = MT5ForTokenClassification.from_pretrained(path, num_labels=5)
    assert tagger.classifier.out_features == 5
    enc = m.encode(ids()).last_hidden_state
    assert torch.allclose(tagger.transformer(ids()).last_hidden_state, enc)


def test_load_model_picks_family_and_class(tmp_path):
    u = tiny(UMT5ForConditionalGeneration)
    u.save_pretrained(tmp_path)
    assert type(model.load_model(tmp_path)) is UMT5ForConditionalGeneration
    assert type(model.load_model(tmp_path, task="encoder")) is model.UMT5EncoderModel
    with pytest.raises(ValueError, match="unknown task 'translate'"):
        model.load_model(tmp_path, task="translate")


# -- Hub cache ------------------------------------------------------------------------------------------------
def make_hub_cache(cache: Path, repo: str, files_from: Path, revision="a" * 40) -> Path:
    """Lays out files exactly as huggingface_hub caches a repo snapshot."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        shutil.copy(f, snap / f.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return snap


def test_hub_id_resolves_from_cache_offline(saved, tmp_path):
    m, path = saved
    make_hub_cache(tmp_path / "hub", "tiny-org/tiny-mt5", path)
    loaded = MT5ForConditionalGeneration.from_pretrained("tiny-org/tiny-mt5", cache_dir=tmp_path / "hub")
    assert torch.equal(loaded.lm_head.weight, m.lm_head.weight)


def test_bin_only_repo_in_cache_loads(tmp_path):
    """The big official repos ship only pytorch_model.bin."""
    m = tiny()
    m.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert not (tmp_path / "bin" / "model.safetensors").exists()
    make_hub_cache(tmp_path / "hub", "google/mt5-tiny", tmp_path / "bin")
    loaded = model.load_model("google/mt5-tiny", cache_dir=tmp_path / "hub")
    assert torch.equal(loaded.shared.weight, m.shared.weight)


def test_unknown_repo_offline_says_so(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        MT5ForConditionalGeneration.from_pretrained("nobody/does-not-exist", cache_dir=tmp_path)


def test_missing_directory_says_so(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="not a directory here"):
        MT5ForConditionalGeneration.from_pretrained(str(tmp_path / "nope" / "deeper"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="has no config.json"):
        MT5ForConditionalGeneration.from_pretrained(tmp_path / "empty")


# -- bad checkpoints --------------------------------------------------------------------------------------------
def test_missing_weights_are_listed(saved):
    _, path = saved
    state = load_file(path / "model.safetensors")
    del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"], state["decoder.final_layer_norm.weight"]
    save_file(state, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks 2 weight.*encoder.block.1.layer.1.DenseReluDense.wo.weight"):
        MT5ForConditionalGeneration.from_pretrained(path)


def test_unexpected_weights_are_listed(saved):
    _, path = saved
    state = load_file(path / "model.safetensors")
    state["encoder.block.5.layer.0.SelfAttention.q.weight"] = torch.zeros(12, 16)
    save_file(state, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not have: encoder.block.5.layer.0.SelfAttention.q.weight"):
        MT5ForConditionalGeneration.from_pretrained(path)


def test_shape_mismatch_names_the_weight(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["vocab_size"] = 80
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shared.weight has shape \(64, 16\) but the config implies \(80, 16\)"):
        MT5ForConditionalGeneration.from_pretrained(path)


def test_truncated_safetensors(saved):
    _, path = saved
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        MT5ForConditionalGeneration.from_pretrained(path)


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAYLOAD_FLAG']}",))


def test_bin_with_code_is_refused_and_not_run(saved, tmp_path, monkeypatch):
    _, path = saved
    flag = tmp_path / "pwned"
    monkeypatch.setenv("PAYLOAD_FLAG", str(flag))
    (path / "model.safetensors").unlink()
    torch.save({"shared.weight": torch.zeros(64, 16), "evil": Payload()}, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused: its pickle holds more than tensors"):
        MT5ForConditionalGeneration.from_pretrained(path)
    assert not flag.exists()
    # the same pickle really would run code if fully unpickled: the test's payload is live
    pickle.loads(pickle.dumps(Payload()))
    assert flag.exists()


def test_config_of_another_model_type(saved):
    _, path = saved
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 16}))
    with pytest.raises(ValueError, match="model_type 'bert', not an mT5/UMT5 model"):
        MT5ForConditionalGeneration.from_pretrained(path)
    with pytest.raises(ValueError, match="model_type 'bert'"):
        model.load_model(path)


def test_wrong_family_class_suggests_the_right_one(tmp_path):
    tiny(UMT5ForConditionalGeneration).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="umt5 checkpoint.*use UMT5ForConditionalGeneration"):
        MT5ForConditionalGeneration.from_pretrained(tmp_path)


# -- config quirks --------------------------------------------------------------------------------------------
def test_config_quirks(tmp_path):
    # google/umt5-small: no model_type, only architectures
    cfg = model.config.config_class(model.config.family_of({"architectures": ["UMT5ForConditionalGeneration"]}))
    assert cfg is UMT5Config
    # older mT5 configs lack relative_attention_max_distance; fine-tunes say model_type t5; unknown keys kept
    c = MT5Config.from_dict({"model_type": "t5", "d_model": 16, "num_layers": 3, "my_key": [1, 2],
                             "vocab_size": 250100, "id2label": {"0": "neg", "1": "pos"}})
    assert c.relative_attention_max_distance == 128 and c.num_decoder_layers == 3 and c.vocab_size == 250100
    assert c.id2label == {0: "neg", 1: "pos"} and c.label2id == {"neg": 0, "pos": 1} and c.num_labels == 2
    c.save_pretrained(tmp_path)
    back = json.loads((tmp_path / "config.json").read_text())
    assert back["my_key"] == [1, 2] and back["model_type"] == "mt5" and back["id2label"] == {"0": "neg", "1": "pos"}
    with pytest.raises(ValueError, match="feed_forward_proj='gelu-gated' is not valid"):
        MT5Config(feed_forward_proj="gelu-gated")


def test_weights_decide_gated_feed_forward(tmp_path):
    """google/umt5-base's config says relu but its weights are gated."""
    u = tiny(UMT5ForConditionalGeneration)
    u.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["feed_forward_proj"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="says feed_forward_proj='relu' but the weights are gated"):
        loaded = UMT5ForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.feed_forward_proj == "gated-gelu"
    x = ids()
    assert torch.allclose(loaded(input_ids=x, labels=x).logits, u(input_ids=x, labels=x).logits)


def test_checkpoint_without_shared_uses_encoder_embed_tokens(saved):
    m, path = saved
    state = load_file(path / "model.safetensors")
    state["encoder.embed_tokens.weight"] = state.pop("shared.weight")
    save_file(state, path / "model.safetensors")
    loaded = MT5ForConditionalGeneration.from_pretrained(path)
    assert torch.equal(loaded.shared.weight, m.shared.weight)
    assert not torch.equal(loaded.shared.weight, loaded.lm_head.weight)


def test_tied_model_saves_once_and_stays_tied(tmp_path):
    m = tiny(tie_word_embeddings=True)
    m.save_pretrained(tmp_path, max_shard_size=2000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"] and len(set(index["weight_map"].values())) > 1
    loaded = MT5ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.lm_head.weight is loaded.shared.weight and loaded.dtype == torch.bfloat16


# -- inputs -----------------------------------------------------------------------------------------------------
def test_bad_inputs_are_named():
    m = tiny()
    with pytest.raises(ValueError, match="input_ids contains id 64, outside \\[0, vocab_size=64\\)"):
        m(input_ids=torch.tensor([[5, 64]]), labels=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="attention mask for input_ids has shape \\(2, 3\\)"):
        m(input_ids=ids(), attention_mask=torch.ones(2, 3), labels=ids())
    with pytest.raises(TypeError, match="integer tensor"):
        m(input_ids=torch.rand(2, 3), labels=ids())
    with pytest.raises(ValueError, match="pass decoder_input_ids or labels"):
        m(input_ids=ids())
    with pytest.raises(ValueError, match="same number of eos"):
        tiny(MT5ForSequenceClassification)(input_ids=torch.tensor([[5, 1, 6, 1], [5, 6, 7, 1]]))
    with pytest.raises(TypeError, match="needs a UMT5Config"):
        UMT5ForConditionalGeneration(MT5Config(**TINY))


# -- cache and training -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [MT5ForConditionalGeneration, UMT5ForConditionalGeneration])
def test_cached_forward_equals_uncached(cls):
    m = tiny(cls)
    x = ids(3, 9)
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    dec = torch.cat([torch.zeros(3, 1, dtype=torch.long), ids(3, 12, seed=1)], 1)
    with torch.no_grad():
        full = m(input_ids=x, attention_mask=mask, decoder_input_ids=dec)
        enc = m.encode(x, mask)
        cache, steps = None, []
        for t in range(dec.shape[1]):
            out = m(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec[:, t:t + 1],
                    past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    assert cache.get_seq_length() == dec.shape[1]
    torch.testing.assert_close(torch.cat(steps, 1), full.logits, atol=1e-5, rtol=0)
    assert torch.equal(torch.cat(steps, 1).argmax(-1), full.logits.argmax(-1))


def test_training_mode_uses_dropout_and_backward_reaches_every_weight():
    m = tiny(dropout_rate=0.3)
    x = ids()
    m.train()
    a, b = m(input_ids=x, labels=x).logits, m(input_ids=x, labels=x).logits
    assert not torch.equal(a, b)
    loss = m(input_ids=x, labels=x).loss
    loss.backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    m.eval()
    assert torch.equal(m(input_ids=x, labels=x).logits, m(input_ids=x, labels=x).logits)


def test_bin_in_the_old_non_zip_format_loads(saved):
    """Checkpoints saved before PyTorch 1.6 cannot be memory-mapped: read them in full (still weights-only)."""
    m, path = saved
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    loaded = MT5ForConditionalGeneration.from_pretrained(path)
    assert torch.equal(loaded.lm_head.weight, m.lm_head.weight)
