"""`python -m app train`: corrections from a real SQLite store to a LoRA run on the demo checkpoint, the counts
printed first, the result saved in the Hub's format with its data fingerprint, and an old-vs-new compare job on
the held-out split with the linguists' targets as references; bad settings refused."""
import json

import pytest
import torch

from app.annotation.comparisons import compare_rows, list_compare_jobs
from app.annotation.datasets import from_annotations
from app.annotation.store import Annotation, AnnotationStore
from app.cli import main
from model import load_model

INPUTS = [f"Der Satz Nummer {i} erzählt von einem Hund." for i in range(40)]


@pytest.fixture
def store_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MT5_STUDIO_DEMO_DIR", str(tmp_path / "demo"))
    path = tmp_path / "annotations.db"
    with AnnotationStore(path) as store:
        for i, text in enumerate(INPUTS):
            store.save(Annotation(task="summarization", model_id="demo/generation", input=text, output="x",
                                  annotator="Ann", corrected_output=f"Ein Hund, Satz {i}."))
    return path


def test_corrections_train_lora_and_an_old_vs_new_job_is_made(tmp_path, store_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "demo/generation", "--task", "summarization", "--from-annotations", "--db",
            str(store_path), "--output", str(out), "--lora", "--max-steps", "2", "--batch-size", "4", "--demo",
            "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    with AnnotationStore(store_path) as store:
        data = from_annotations(store, "summarization")
        assert data.summary() in printed.splitlines()[0]                   # the counts come before training
        (job,) = list_compare_jobs(store)
        rows = compare_rows(store, job.id)
    assert sorted(r.text for r in rows) == sorted(e.input for e in data.heldout) and data.heldout
    assert all(r.processed and r.reference.startswith("Ein Hund") for r in rows)
    assert f"Compare job {job.id} (old vs new, {len(rows)} held-out rows" in printed and "chrf old" in printed
    state = json.loads((out / "final" / "training.json").read_text())
    assert state["about"]["data_fingerprint"] == data.fingerprint() and state["step"] == 2
    assert (out / "final" / "adapter" / "adapter_config.json").is_file()
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == len(data.train)
    merged = load_model(out / "final" / "merged")
    base = load_model(tmp_path / "demo" / "generation")
    q = "encoder.block.0.layer.0.SelfAttention.q.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])    # the adapters were merged in
    k = "encoder.block.0.layer.0.SelfAttention.k.weight"
    assert torch.equal(merged.state_dict()[k], base.state_dict()[k])        # and only q and v carry them


@pytest.mark.parametrize("extra,message", [
    (["--max-steps", "0"], "--max-steps must be 1 to 20,000"),
    (["--max-minutes", "100000"], "--max-minutes must be above 0 and at most 360"),
])
def test_bad_settings_are_refused_before_anything_runs(tmp_path, store_path, capsys, extra, message):
    argv = ["train", "--model", "demo/generation", "--task", "summarization", "--from-annotations", "--db",
            str(store_path), "--output", str(tmp_path / "run"), "--demo", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_file_of_pairs_needs_input_and_target(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MT5_STUDIO_DEMO_DIR", str(tmp_path / "demo"))
    rows = tmp_path / "pairs.jsonl"
    rows.write_text('{"input": "a", "target": "b"}\n{"input": "c"}\n', encoding="utf-8")
    argv = ["train", "--model", "demo/generation", "--task", "summarization", "--input", str(rows), "--output",
            str(tmp_path / "run"), "--demo"]
    assert main(argv) == 2
    assert 'pairs.jsonl line 2: each line needs "input" and "target"' in capsys.readouterr().err
