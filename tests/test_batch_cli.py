"""The batch command (`python -m app batch`, model/batch.py): one process and `accelerate launch` with two CPU
processes (gloo) write the same bytes; a run killed midway finishes when run again, no row lost or repeated; bad
input is refused with what to do (an --output that is not a job's file is left as it is; deep or malformed JSON is
one line naming the file and line); the output imports into the Batch tab's queue; the tab shows the commands for a
large file and lets only admins import."""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from app.annotation.batch import (import_outputs, job_progress, job_rows, list_jobs, load_inputs,
                                  queue_position)
from app.annotation.store import AnnotationStore
from app.assets import load_assets
from app.cli import command_lines, main, parse_args
from model.batch import shard_dir
from model.tiny import build_demo_checkpoints

ROOT = Path(__file__).resolve().parent.parent
ASSETS = load_assets()
ROWS = 50
SETTINGS = ["--demo", "--model", "demo/generation", "--task", "summarization", "--max-new-tokens", "3",
            "--no-progress"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    build_demo_checkpoints(folder, ASSETS.example_texts())   # what --demo builds: it reuses these
    return folder


@pytest.fixture
def env(demo_dir, monkeypatch):
    """The environment of every run, here and in the launched processes: the demo checkpoints, no network,
    no GPU (the processes group over gloo), one thread each."""
    values = {"MT5_STUDIO_DEMO_DIR": str(demo_dir), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
              "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **values}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """50 rows in the eight languages of the examples (Arabic, Hindi, Chinese, Japanese, ...), lengths varied."""
    texts = [e["text"] for e in ASSETS.examples["summarization"]]
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    lines = [json.dumps({"text": f"{texts[i % len(texts)][: 12 + (i * 7) % 50]} {i}", "id": i}, ensure_ascii=False)
             for i in range(ROWS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_process(rows, demo_dir, tmp_path_factory):
    """The one-process run's output (in this process: `main` is what `python -m app batch` calls)."""
    out = tmp_path_factory.mktemp("one") / "one.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MT5_STUDIO_DEMO_DIR", str(demo_dir))
        assert main([*batch_args(rows, out)]) == 0
    return out


def batch_args(rows: Path, out: Path, *more: str) -> list[str]:
    return ["batch", *SETTINGS, "--input", str(rows), "--output", str(out), *more]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], env: dict, **popen) -> subprocess.Popen:
    """`accelerate launch` of two processes on this CPU. accelerate 1.x starts several processes only through
    torchrun (`--multi_gpu`; its `--cpu` starts one); without a visible GPU the command groups them over gloo."""
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "app", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow   # one launch: about 30 s on a busy 2-core machine
def test_two_processes_write_what_one_process_writes(one_process, rows, env, tmp_path):
    out = tmp_path / "two.jsonl"
    log = finish(launch(batch_args(rows, out), env))
    assert "to run on 2 process(es)" in log and "50 now on 2 process(es)" in log
    assert out.read_bytes() == one_process.read_bytes()
    assert not shard_dir(out).exists()
    got = records(out)
    assert [r["index"] for r in got] == list(range(ROWS))
    first = got[0]   # the provenance the app records, the row's index and inputs
    assert (first["model_id"], first["task"], first["family"], first["dtype"]) == ("demo/generation",
                                                                                  "summarization", "mt5", "float32")
    assert first["decoding"]["max_new_tokens"] == 3 and first["app_version"] and first["source"] == "rows.jsonl"
    assert [r["text"] for r in got] == [x.text for x in load_inputs(rows)]
    assert all(isinstance(r["output"], str) and r["error"] is None for r in got)


@pytest.mark.slow   # two launches: about 50 s on a busy 2-core machine
def test_a_killed_run_resumes_without_losing_or_repeating_a_row(one_process, rows, env, tmp_path, capsys):
    out = tmp_path / "killed.jsonl"
    proc = launch(batch_args(rows, out), env)
    written, deadline = 0, time.monotonic() + 240
    while written < 6 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
        written = sum(p.read_bytes().count(b"\n") for p in shard_dir(out).glob("*.jsonl"))
    # the launcher and its two processes, mid-run (torchrun starts them in sessions of their own)
    tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in reversed(tree):
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    assert not out.exists() and 6 <= written < ROWS, written
    log = finish(launch(batch_args(rows, out), env))
    done_before = int(log.split("50 rows: ")[1].split(" done before")[0])
    assert done_before >= 6, log[-2000:]
    assert out.read_bytes() == one_process.read_bytes()   # every row once, in order, as one process wrote them
    assert main(batch_args(rows, out)) == 0   # a finished job, run again: nothing to run, the file unchanged
    assert "50 done before, 0 to run" in capsys.readouterr().err and out.read_bytes() == one_process.read_bytes()


@pytest.mark.parametrize("case, message", [
    ("no text column", "has no `text` column (found: id, sentence)"),
    ("unknown column", "has no `body` column"),
    ("unknown task", "unknown task 'poetry': use one of summarization"),
    ("task the checkpoint cannot do", "cannot run span_filling with demo/question-answering: "
                                      "'demo/question-answering': this checkpoint has no language-model head"),
    ("output of another job", "was written by another job (decoding {\"max_new_tokens\": 3"),
    ("decoding out of bounds", "num_beams=99 is out of range"),
])
def test_bad_input_is_refused_with_a_clear_message(case, message, one_process, rows, env, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("id,sentence\n1,Hola mundo\n2,مرحبا\n", encoding="utf-8")
    taken = tmp_path / "taken.jsonl"
    taken.write_bytes(one_process.read_bytes())
    argv = {
        "no text column": batch_args(other, tmp_path / "o.jsonl"),
        "unknown column": batch_args(rows, tmp_path / "o.jsonl", "--text-column", "body"),
        "unknown task": ["batch", "--model", "demo/generation", "--task", "poetry", "--input", str(rows),
                         "--output", str(tmp_path / "o.jsonl")],
        "task the checkpoint cannot do": ["batch", "--demo", "--model", "demo/question-answering", "--task",
                                          "span_filling", "--input", str(rows), "--output", str(tmp_path / "o.jsonl")],
        "output of another job": [*batch_args(rows, taken), "--max-new-tokens", "2"],
        "decoding out of bounds": batch_args(rows, tmp_path / "o.jsonl", "--num-beams", "99"),
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert taken.read_bytes() == one_process.read_bytes()   # a refused run writes nothing
    assert not (tmp_path / "o.jsonl").exists()


def run_command(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """`python -m app batch ...` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)


def test_an_output_that_is_not_a_jobs_file_is_refused_and_left_as_it_is(env, tmp_path):
    two = tmp_path / "two.jsonl"
    two.write_text('{"text": "Hola mundo"}\n{"text": "Bonjour"}\n', encoding="utf-8")
    users = tmp_path / "users.txt"
    users.write_bytes(b"alice:secret")   # one line, no newline: resuming would read it as torn by a kill
    done = run_command(batch_args(two, users), env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert f"error: {users} exists and is not the output of `python -m app batch`" in line
    assert "give another --output" in line
    assert users.read_bytes() == b"alice:secret" and not shard_dir(users).exists()


def test_deep_json_is_a_one_line_message_naming_the_file_and_line(env, tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": "uno"}\n' + "[" * 60000 + "\n", encoding="utf-8")
    done = run_command(batch_args(deep, tmp_path / "o.jsonl"), env)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "RecursionError" not in done.stderr, \
        done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line == "error: deep.jsonl line 2: not valid JSON (nested too deeply to read)"
    out = tmp_path / "deep-out.jsonl"   # an --output whose first line is deep JSON: not a job's file
    out.write_text("[" * 60000, encoding="utf-8")
    two = tmp_path / "two.jsonl"
    two.write_text('{"text": "Hola mundo"}\n', encoding="utf-8")
    done = run_command(batch_args(two, out), env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "is not the output of `python -m app batch`" in done.stderr and out.read_text() == "[" * 60000


def test_every_reader_of_json_input_says_which_file_and_line(tmp_path):
    from app.annotation.api import parse_decoding
    from app.errors import read_json_line

    deep = "[" * 60000
    with pytest.raises(ValueError, match=r"^x\.jsonl line 3: not valid JSON \(nested too deeply to read\)$"):
        read_json_line(deep, "x.jsonl line 3")
    with pytest.raises(ValueError, match=r"^x\.jsonl line 3: not valid JSON \(Expecting value at column 7\)$"):
        read_json_line('{"a": }', "x.jsonl line 3")
    with pytest.raises(ValueError, match="decoding must be a JSON object .*nested too deeply"):
        parse_decoding(deep)
    path = tmp_path / "deep.jsonl"
    path.write_text(deep + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"deep\.jsonl line 1: not valid JSON \(nested too deeply"):
        load_inputs(path)
    store = AnnotationStore(tmp_path / "annotations.db")
    try:
        with pytest.raises(ValueError, match=r"deep\.jsonl is not the output .*line 1: not valid JSON \(nested"):
            import_outputs(store, path)
    finally:
        store.close()


def test_a_text_column_is_named_by_the_option(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("id,Sentence\n1,Hola mundo\n2,مرحبا\n", encoding="utf-8")
    assert [x.text for x in load_inputs(other, text_column="sentence")] == ["Hola mundo", "مرحبا"]


def test_the_output_imports_into_the_batch_queue(one_process, rows, tmp_path):
    store = AnnotationStore(tmp_path / "annotations.db")
    try:
        job = import_outputs(store, one_process)
        assert (job.task, job.total, job.source) == ("summarization", ROWS, "rows.jsonl")
        assert job_progress(store, job.id).processed == ROWS
        assert job.settings["model_id"] == "demo/generation" and job.settings["decoding"]["max_new_tokens"] == 3
        want = records(one_process)
        assert [(r.text, r.output) for r in job_rows(store, job.id)] == [(r["text"], r["output"]) for r in want]
        assert queue_position(store, job.id, 0).row.output == want[0]["output"]
        for bad, message in [(rows, "is not the output of `python -m app batch` (line 1 has no `index`"),
                             (one_process, "was imported before")]:
            with pytest.raises(ValueError, match=re.escape(message)):
                import_outputs(store, bad)
        shard = tmp_path / "rank-0.jsonl"   # rows 1 and 3 only: a shard, not the finished file
        shard.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (want[3], want[1])) + "\n")
        with pytest.raises(ValueError, match="does not have every row once"):
            import_outputs(store, shard)
        assert len(list_jobs(store)) == 1
    finally:
        store.close()


def test_command_lines_are_the_command_with_the_settings_picked():
    from app.tasks import Decoding

    got = command_lines("summarization", "google/mt5-small", "my rows.csv",
                        Decoding(max_new_tokens=64.0, num_beams=4, length_penalty=1.0, do_sample=False, seed=None),
                        dtype="bfloat16", processes=8)
    (one,), (gpus,), (rank0, rank1) = got.values()
    args = parse_args(shlex.split(one)[3:])
    assert (args.model, args.task, args.input, args.output) == ("google/mt5-small", "summarization", "my rows.csv",
                                                                "my rows.out.jsonl")
    assert (args.max_new_tokens, args.num_beams, args.length_penalty, args.dtype) == (64, 4, 1.0, "bfloat16")
    assert gpus.startswith("accelerate launch --multi_gpu --num_processes 8 -m app batch --model google/mt5-small")
    assert "--num_machines 2" in rank0 and "--machine_rank 0" in rank0 and "--machine_rank 1" in rank1
    assert "--num_processes 16" in rank1 and "--main_process_ip" in rank1 and "'my rows.csv'" in rank1


def test_batch_tab_shows_the_command_for_a_large_file_and_imports_for_admins_only(one_process, demo_dir, tmp_path):
    import functools

    from app.annotation.rights import identify
    from app.annotation.tabs import batch_tab
    from app.main import prepare
    from app.settings import Settings

    big, small = tmp_path / "big.csv", tmp_path / "small.csv"
    big.write_text("text\n" + "".join(f"Texto número {i}\n" for i in range(201)), encoding="utf-8")
    small.write_text("text\nuno\ndos\n", encoding="utf-8")
    settings = Settings(demo_dir=demo_dir, sign_in="password", users={"ada": "pw", "bob": "pw"},
                        admins=frozenset({"ada"}))
    ctx, _ = prepare(True, settings)
    store = AnnotationStore(tmp_path / "annotations.db")
    try:
        ada = identify(SimpleNamespace(username="ada"), settings)
        command_for = functools.partial(batch_tab.command_for, store, ada, ctx=ctx)
        decoding = [8, 1, 0, 1.0, False, 1.0, 50, 1.0, 1.0, -1]   # decoding_controls() order
        shown = "".join(map(str, command_for(str(big), "summarization", "", "auto", "auto", "none", *decoding)
                            .values()))
        assert "201 rows" in shown and "accelerate launch --multi_gpu --num_processes 8 -m app batch" in shown
        assert "--model demo/generation --task summarization --input big.csv --output big.out.jsonl" in shown
        assert "--demo --max-new-tokens 8 --num-beams 1" in shown and "--machine_rank 1" in shown
        quiet = command_for(str(small), "summarization", "", "auto", "auto", "none", *decoding)
        assert "".join(map(str, quiet.values())) == ""
        deep = tmp_path / "deep.jsonl"   # unreadable: no command shown (creating the job says why), no traceback
        deep.write_text("[" * 60000 + "\n", encoding="utf-8")
        assert "".join(map(str, command_for(str(deep), "summarization", "", "auto", "auto", "none", *decoding)
                           .values())) == ""

        refused = batch_tab.import_output(store, identify(SimpleNamespace(username="bob"), settings),
                                          str(one_process))
        assert "admin" in "".join(map(str, refused.values())) and list_jobs(store) == []
        done = batch_tab.import_output(store, ada, str(one_process))
        assert f"Imported {ROWS} row(s)" in "".join(map(str, done.values()))
        assert [j.total for j in list_jobs(store)] == [ROWS]
    finally:
        store.close()
