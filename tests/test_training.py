"""Training in the model layer (issue 27, part 1): model/training.py against transformers 4.57 and peft 0.22.

The differential test: from the same weights (a checkpoint we save and transformers loads) and the same batch,
two optimizer steps of our Trainer and of transformers' Trainer optimizer and schedule (AdamW, weight decay,
linear decay, gradient clipping at 1.0) give the same loss, gradient norm, learning rate, clipped gradients and
updated weights within 1e-5 (fp32), for mT5, UMT5 and tied T5; full fine-tuning, LoRA (our LoRALinear against
peft's, the adapter passed in peft's files) and the classification heads. Dropout is 0: the two libraries draw
their dropout masks differently. The trained model saved by save_trained (full, or LoRA merged) loads in
transformers with our logits; the adapter peft saves after its steps loads into ours with its weights.

The rest runs without the reference: the loop, resume, gradient checkpointing, length grouping, bad input.
"""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from model import training
from model.training import LoraSettings, TrainSettings
from refutil import run_reference

ATOL = 1e-5
RTOL = 1e-5   # logits only, as tests/test_t5_family.py: fp32 round-off on logits up to ~20 of random weights
SHAPE = dict(d_model=32, d_ff=48, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=3, vocab_size=300,
             dropout_rate=0.0, classifier_dropout=0.0, relative_attention_num_buckets=8,
             relative_attention_max_distance=16, num_labels=3)
FAMILIES = {"mt5": ("MT5", model.MT5Config, {}), "umt5": ("UMT5", model.UMT5Config, {}),
            "t5": ("T5", model.T5Config, {"feed_forward_proj": "relu", "tie_word_embeddings": True})}
CASES = {
    # name: (family, class suffix, LoRA or None)
    "mt5_full": ("mt5", "ForConditionalGeneration", None),
    "umt5_full": ("umt5", "ForConditionalGeneration", None),
    "t5_tied_full": ("t5", "ForConditionalGeneration", None),
    "mt5_lora": ("mt5", "ForConditionalGeneration", LoraSettings(r=4, alpha=8, target_modules=("q", "v"))),
    "umt5_lora": ("umt5", "ForConditionalGeneration",
                  LoraSettings(r=4, alpha=16, target_modules=("q", "k", "v", "o", "wi_0", "wo"))),
    "mt5_seqcls": ("mt5", "ForSequenceClassification", None),
    "umt5_seqcls_lora": ("umt5", "ForSequenceClassification", LoraSettings(r=2, alpha=4)),
    "mt5_tokcls": ("mt5", "ForTokenClassification", None),
}
SETTINGS = TrainSettings(learning_rate=1e-4, weight_decay=0.01, max_grad_norm=1.0, warmup_steps=0)
TOTAL_STEPS, STEPS = 4, 2


def make_model(name: str, seed: int = 0):
    family, suffix, _ = CASES[name]
    prefix, config_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    return getattr(model, prefix + suffix)(config_cls(**SHAPE, **extra))


def make_batch(suffix: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """Three rows of ids 3.. (no eos inside), each ending in eos, right-padded; labels for the head."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, SHAPE["vocab_size"], (n,), generator=g).tolist() + [1] for n in (9, 5, 7)]
    features = []
    for row in rows:
        if suffix == "ForConditionalGeneration":
            labels = torch.randint(3, SHAPE["vocab_size"], (len(row) // 2,), generator=g).tolist() + [1]
        elif suffix == "ForSequenceClassification":
            labels = int(torch.randint(0, 3, (1,), generator=g))
        else:
            labels = torch.randint(0, 3, (len(row),), generator=g).tolist()
            labels[-1] = training.IGNORE
        features.append({"input_ids": row, "labels": labels})
    return training.collate(features, pad_id=0)


def our_steps(net, batch) -> dict[str, torch.Tensor]:
    trainer = training.Trainer(net, SETTINGS, TOTAL_STEPS)
    out = {}
    for step in range(STEPS):
        r = trainer.step([batch])
        out.update({f"loss.{step}": torch.tensor(r.loss), f"norm.{step}": torch.tensor(r.grad_norm),
                    f"lr.{step}": torch.tensor(r.learning_rate, dtype=torch.float64)})
        for n, p in trainer.trainable().items():
            if p.grad is not None:
                out[f"clipped.{step}.{n}"] = p.grad.clone()
            out[f"param.{step}.{n}"] = p.detach().clone()
    net.eval()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Our two steps for every case, then one reference run: its steps, and our saved results loaded there."""
    root = tmp_path_factory.mktemp("training")
    jobs, ours = {"steps": [], "check": []}, {}
    for name, (family, suffix, lora) in CASES.items():
        prefix = FAMILIES[family][0]
        net = make_model(name)
        net.save_pretrained(root / name / "base")
        batch = make_batch(suffix)
        save_file(batch, root / name / "batch.safetensors")
        if lora is not None:
            training.add_lora(net, lora)
            with torch.no_grad():   # B starts at zero; a random B gives A a gradient at the first step too
                g = torch.Generator().manual_seed(2)
                for m in training.lora_modules(net).values():
                    m.lora_B.weight.normal_(0, 0.05, generator=g)
            training.save_adapter(net, root / name / "adapter")
        result = our_steps(net, batch)
        with torch.no_grad():
            result["logits"] = net(**batch).logits
        saved = training.save_trained(net, root / name / "trained")
        ours[name] = {"steps": result, "net": net, "saved": saved, "batch": batch}
        case = {"name": name, "cls": prefix + suffix, "dir": str(root / name / "base"),
                "batch": str(root / name / "batch.safetensors"), "settings": SETTINGS.to_dict(),
                "total_steps": TOTAL_STEPS, "steps": STEPS, "out": str(root / name / "ref.safetensors")}
        if lora is not None:
            case.update(adapter=str(root / name / "adapter"), adapter_out=str(root / name / "ref_adapter"))
        jobs["steps"].append(case)
        jobs["check"].append({"name": name, "cls": prefix + suffix, "dir": str(saved["model"]),
                              "batch": case["batch"], "out": str(root / name / "check.safetensors")})
    (root / "jobs.json").write_text(json.dumps(jobs))
    run_reference("ref_training.py", root / "jobs.json", root / "out.json", timeout=240)
    return {"root": root, "ours": ours, "ref": json.loads((root / "out.json").read_text())}


def max_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return (ours.double() - ref.double()).abs().max().item() if ours.numel() else 0.0


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = 0.0) -> None:
    diff = max_diff(ours, ref)
    allowed = ATOL + rtol * ref.abs().max().item()
    assert diff <= allowed, f"{what}: max |ours - transformers| = {diff:.3g} > {allowed:.3g}"


@pytest.mark.parametrize("name", list(CASES))
def test_two_steps_match_transformers_trainer(reference, name):
    ours, ref = reference["ours"][name]["steps"], load_file(reference["root"] / name / "ref.safetensors")
    info = reference["ref"][name]
    trainable = [k.split(".", 2)[2] for k in ours if k.startswith("param.0.")]
    assert sorted(trainable) == sorted(info["trainable"])
    net = reference["ours"][name]["net"]
    decayed = {n for n, p in net.named_parameters() if p.requires_grad and not training.NO_DECAY.search(n.lower())}
    assert decayed == set(info["decayed"]) & set(trainable)
    diffs = {}
    for step in range(STEPS):
        for key in ("loss", "norm", "lr"):
            # scalars relative to their size: the norm sums every squared gradient (|norm| up to ~100 here)
            diffs[f"{key}.{step}"] = max_diff(ours[f"{key}.{step}"], ref[f"{key}.{step}"]) / max(
                1.0, abs(ref[f"{key}.{step}"].item()))
        for prefix in ("clipped", "param"):
            keys = sorted(k for k in ref if k.startswith(f"{prefix}.{step}."))
            assert keys and keys == sorted(k for k in ours if k.startswith(f"{prefix}.{step}."))
            diffs.update({k: max_diff(ours[k], ref[k]) for k in keys})
    worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:4]
    print(name, ", ".join(f"{k} {v:.2g}" for k, v in worst))
    assert worst[0][1] <= ATOL, f"{name}: max |ours - transformers| above {ATOL}: {worst}"
    # the steps moved the weights by far more than the tolerance
    moved = max((ref[f"param.1.{n}"] - ref[f"param.0.{n}"]).abs().max().item() for n in trainable)
    assert moved > 5 * ATOL


@pytest.mark.parametrize("name", list(CASES))
def test_saved_result_loads_in_transformers_and_ours_with_the_same_logits(reference, name):
    entry = reference["ours"][name]
    ref = load_file(reference["root"] / name / "check.safetensors")["logits"]
    family, suffix, lora = CASES[name]
    loaded = getattr(model, FAMILIES[family][0] + suffix).from_pretrained(entry["saved"]["model"])
    with torch.no_grad():
        logits = loaded(**entry["batch"]).logits
    assert_close(logits, ref, f"{name}: our loader and transformers on our saved {entry['saved']['model'].name}",
                 RTOL)
    if lora is None:
        assert torch.equal(logits, entry["steps"]["logits"])
    else:   # x (W + B A s) against x W + (x A) B s: fp32 rounding on logits up to ~20
        assert_close(logits, entry["steps"]["logits"], f"{name}: merged against the trained LoRA model", RTOL)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[2] is not None])
def test_lora_adapter_files_pass_both_ways_with_peft(reference, name):
    root, entry = reference["root"], reference["ours"][name]
    ref = load_file(root / name / "ref.safetensors")
    fresh = make_model(name)
    training.load_adapter(fresh, root / name / "ref_adapter")     # what peft saved after its steps
    for n, p in fresh.named_parameters():
        if p.requires_grad:
            assert_close(p.detach(), ref[f"param.{STEPS - 1}.{n}"], f"{name}: peft's saved {n}")
    fresh.eval()
    with torch.no_grad():
        unmerged = fresh(**entry["batch"]).logits
        training.merge_lora(fresh)
        merged = fresh(**entry["batch"]).logits
        assert_close(merged, ref["merged_logits"], f"{name}: peft's merge_and_unload vs our merge_lora", RTOL)
        assert_close(unmerged, merged, f"{name}: our adapter merged and not", RTOL)
        training.unmerge_lora(fresh)
        assert_close(fresh(**entry["batch"]).logits, unmerged, f"{name}: unmerged again", RTOL)
    ours = json.loads((entry["saved"]["adapter"] / "adapter_config.json").read_text())
    assert ours["peft_type"] == "LORA" and ours["r"] == CASES[name][2].r


# ------------------------------------------------------------------------------------------------------------
# Without the reference
# ------------------------------------------------------------------------------------------------------------
def toy_features(n: int = 24, seed: int = 3) -> list[dict]:
    """A learnable task: the target is the input's first three ids."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 40, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist()
        out.append({"input_ids": ids + [1], "labels": ids[:3] + [1]})
    return out


def tiny(seed: int = 0) -> model.MT5ForConditionalGeneration:
    torch.manual_seed(seed)
    return model.MT5ForConditionalGeneration(model.MT5Config(**dict(SHAPE, vocab_size=48, num_decoder_layers=2)))


def test_training_learns_and_saves_a_loadable_checkpoint(tmp_path):
    features = toy_features()
    net = tiny()
    before = training.evaluate_loss(net, features)
    seen = []
    result = training.train(net, features, TrainSettings(learning_rate=1e-2, batch_size=4, epochs=6), tmp_path,
                            progress=seen.append)
    assert result.finished and result.steps == result.total_steps == 36 and len(seen) == 36
    assert seen[-1].remaining == 0 and seen[0].learning_rate == 1e-2
    after = training.evaluate_loss(net, features)
    assert after < before / 2, (before, after)
    loaded = model.MT5ForConditionalGeneration.from_pretrained(result.saved["model"])
    batch = training.collate(features[:4], 0)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, net(**batch).logits)
    state = json.loads((tmp_path / "final" / "training.json").read_text())
    assert state["step"] == 36 and state["data_hash"] == training.data_hash(features)


def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    features = toy_features(16)
    settings = TrainSettings(learning_rate=5e-3, batch_size=4, epochs=3, gradient_accumulation_steps=2,
                             lora=LoraSettings(r=2, alpha=4, dropout=0.1))
    straight = tiny()
    training.train(straight, features, settings, tmp_path / "straight")
    stopped = tiny()
    calls = iter(range(100))
    first = training.train(stopped, features, settings, tmp_path / "resumed", should_stop=lambda: next(calls) >= 2)
    assert not first.finished and first.stopped_by == "request" and first.steps == 3
    assert first.checkpoint.name == "checkpoint-0000003" and not (tmp_path / "resumed" / "final").exists()
    resumed = tiny()
    second = training.train(resumed, features, settings, tmp_path / "resumed")
    assert second.finished and second.steps == 6 and second.losses[:3] == first.losses
    a, b = training.adapter_state(straight), training.adapter_state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="other settings"):
        training.train(tiny(), features, TrainSettings(batch_size=2, lora=settings.lora), tmp_path / "resumed")


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = training.collate(toy_features(4), 0)
    grads = []
    for enable in (False, True):
        net = tiny()
        net.train()
        training.set_gradient_checkpointing(net, enable)
        net(**batch).loss.backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-7) for n in grads[0])


def test_length_grouped_batches_cover_every_row_once_longest_first():
    lengths = [int(x) for x in torch.randint(1, 100, (203,), generator=torch.Generator().manual_seed(0))]
    batches = training.length_grouped_batches(lengths, 8, seed=5)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203)) and len(batches) == math.ceil(203 / 8)
    assert max(lengths) in [lengths[i] for i in batches[0]]
    assert batches == training.length_grouped_batches(lengths, 8, seed=5) != training.length_grouped_batches(
        lengths, 8, seed=6)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    random = training.length_grouped_batches(lengths, 8, seed=5, group=False)
    assert spread < sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in random) / 3


class WordTokenizer:
    """Whitespace words -> ids 3.., `</s>` = 1: enough to test the feature builders."""
    eos_token_id, pad_token_id = 1, 0

    def __init__(self):
        self.vocab = {}

    def encode(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, 3 + len(self.vocab)) for w in text.split()]
        return ids + [1] if add_special_tokens else ids


def test_feature_builders():
    tok = WordTokenizer()
    rows = training.seq2seq_features(tok, ["a b c d e", "b"], ["x y", "z"], max_source_tokens=4)
    assert rows[0] == {"input_ids": [3, 4, 5, 1], "labels": [8, 9, 1]} and rows[1]["input_ids"] == [4, 1]
    rank = training.rank_classification_features(tok, ["a b"], ["yes"])
    assert rank == [{"input_ids": [3, 4], "labels": [11, 1]}]
    tags = training.token_classification_features(tok, [["a", "b c"]], [[2, 0]])
    assert tags == [{"input_ids": [3, 4, 5, 1], "labels": [2, 0, -100, -100]}]
    batch = training.collate(training.classification_features(tok, ["a", "a b c"], [0, 2]), 0)
    assert batch["labels"].tolist() == [0, 2] and batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="one target per input"):
        training.seq2seq_features(tok, ["a"], [])
    with pytest.raises(ValueError, match="one tag per word"):
        training.token_classification_features(tok, [["a", "b"]], [[1]])


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="no training examples"):
        training.train(tiny(), [], TrainSettings(), tmp_path)
    with pytest.raises(ValueError, match="make no batch of 8 for each of 2 process"):
        training.plan([5, 6, 7], TrainSettings(batch_size=8), processes=2)
    with pytest.raises(ValueError, match="invalid training setting.*optimizer='sgd'"):
        TrainSettings(optimizer="sgd")
    with pytest.raises(ValueError, match="no Linear layer matches.*'wi_0'"):
        training.add_lora(tiny(), LoraSettings(target_modules=("query",)))
    assert not list(tmp_path.iterdir())


def test_adafactor_with_gradient_checkpointing_runs(tmp_path):
    net = tiny()
    before = {n: p.clone() for n, p in net.named_parameters()}
    result = training.train(net, toy_features(8), TrainSettings(optimizer="adafactor", batch_size=4, max_steps=2,
                                                                gradient_checkpointing=True), tmp_path)
    assert result.finished and any(not torch.equal(before[n], p) for n, p in net.named_parameters())


LAUNCHED = """
import json, sys
import test_training as T
from model import training
net = T.tiny()
result = training.train(net, T.toy_features(32), training.TrainSettings(
    batch_size=4, epochs=2, learning_rate=1e-2, gradient_accumulation_steps=2,
    lora=training.LoraSettings(r=2, alpha=4)), sys.argv[1])
state = {k: v.tolist() for k, v in training.adapter_state(net).items()}
print("RESULT", json.dumps({"steps": result.steps, "losses": result.losses, "adapter": state}))
"""


@pytest.mark.slow   # one `accelerate launch` of two processes: ~15 s on a quiet 2-core machine
def test_two_processes_under_accelerate_launch_train_one_model(tmp_path):
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "launched.py").write_text(LAUNCHED)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # accelerate 1.x starts several processes only through torchrun (--multi_gpu); without a GPU they use gloo
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), str(tmp_path / "launched.py"), str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": f"{root}:{root / 'tests'}"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2 and results[0] == results[1]   # the same loss (averaged) and adapter in both
    assert results[0]["steps"] == 4   # 8 batches of 4, split over 2 processes, 2 micro-batches per step, 2 epochs
    assert (tmp_path / "out" / "final" / "merged" / "model.safetensors").is_file()
