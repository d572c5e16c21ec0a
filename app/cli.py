"""Command line: `python -m app batch --model M --task T --input rows.{csv,jsonl,parquet} --output out.jsonl`, and
`python -m app score --metric chrf,bleu,metricx --input rows.jsonl --output scores.jsonl` (app.scoring), and
`python -m app train --model M --task T --from-campaign ID --output runs/x` (app.training).

Runs one of the app's tasks (app.tasklist) over every row of a file, as the Batch tab does, on as many processes
and machines as `accelerate launch` starts:

    python -m app batch --model google/mt5-small --task summarization --input rows.csv --output rows.out.jsonl
    accelerate launch --num_processes 4 -m app batch --model ... --input rows.csv --output rows.out.jsonl

The file is read by the Batch tab's reader (app.annotation.batch.load_inputs); each row runs through the task's
own function (TASKS[task].run, as the tab's jobs do), so the outputs are the tab's. Every output record carries
the provenance the tab records (model id, revision, family, dtype, decoding, app version), the row's index and
inputs; the finished file imports into the Batch tab's annotation queue ("Import a command's output"). Killed,
the same command resumes; an output file of another job, or any other file, is refused and left as it is. The
machinery (split, shards, merge) is model.batch's.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from accelerate import PartialState

from model.batch import existing, process_state, run_job

from . import __version__, training
from .annotation.api import batch_process, decoding_dict
from .annotation.batch import BatchInput, BatchRow, job_settings, load_inputs, output_record
from .assets import load_assets
from .context import AppContext
from .demo import build_demo
from .errors import UserError, read_json_line
from .limits import check_bounds
from .models import DTYPES, QUANTIZATIONS
from .scoring import (METRICS, METRICX_QUANTIZATIONS, corpus_summary, load_metricx, metricx_scorer, parse_metrics,
                      read_rows, surface_scorer)
from .settings import Settings
from .tasklist import task as task_named
from .tasks import Decoding

# Decoding options as the page and the API name them (app.limits bounds them): option -> type.
DECODING_OPTIONS = {f.name: (int if "int" in str(f.type) else float) for f in dataclasses.fields(Decoding)
                    if f.name != "do_sample"}
LARGE_FILE_ROWS = 200   # the Batch tab shows the command for files with more rows (or more than its row limit)
BAD_INPUT = 2           # exit status for a refused command; 1: some rows failed (run again to retry them)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m app", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("batch", help="run a task over a file of rows (resumable; data-parallel under accelerate)")
    b.add_argument("--model", required=True, help="Hub id or local checkpoint folder (demo/... with --demo)")
    b.add_argument("--task", required=True, help="one of the app's tasks, e.g. summarization")
    b.add_argument("--input", required=True, help="rows: .csv, .jsonl or .parquet with a `text` column "
                                                  "(or `question` and `context`)")
    b.add_argument("--output", required=True, help="the .jsonl to write (re-running resumes it)")
    b.add_argument("--text-column", help="the column with the inputs (default: `text`, else `input`)")
    b.add_argument("--device", default="auto", help="auto (under accelerate: each process its own), cpu, cuda:0")
    b.add_argument("--dtype", default="auto", choices=DTYPES)
    b.add_argument("--quantization", default="none", choices=list(QUANTIZATIONS))
    b.add_argument("--demo", action="store_true", help="the app's tiny demo checkpoints (demo/generation, ...)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--do-sample", action="store_true", default=None)
    for name, kind in DECODING_OPTIONS.items():
        b.add_argument("--" + name.replace("_", "-"), type=kind)
    s = sub.add_parser("score", help="score a file of outputs: BLEU, chrF++, TER, ROUGE against references, "
                                     "MetricX with or without them (resumable; data-parallel under accelerate)")
    s.add_argument("--metric", required=True, help=f"one or more of {', '.join(METRICS)}, comma-separated")
    s.add_argument("--input", required=True, help="rows: .csv, .jsonl or .parquet with `hypothesis` (or `output`), "
                                                  "`reference`, and `source` for MetricX")
    s.add_argument("--output", required=True, help="the .jsonl of per-row scores (re-running resumes it)")
    s.add_argument("--lang", help="the outputs' language code: picks sacrebleu's tokenizer (zh, ja, ko, th, ...)")
    s.add_argument("--model", default="", help="the MetricX checkpoint (Hub id or folder), for --metric metricx")
    s.add_argument("--tokenizer", default="google/mt5-xl", help="MetricX's tokenizer (default google/mt5-xl)")
    s.add_argument("--qe", action="store_true", help="MetricX without references (a QE or hybrid checkpoint)")
    s.add_argument("--metricx-version", type=int, default=24, choices=[23, 24])
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--dtype", default="auto", choices=DTYPES)
    s.add_argument("--quantization", default="none", choices=list(METRICX_QUANTIZATIONS))
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    training.add_arguments(sub)
    return ap.parse_args(argv)


def decoding_of(args: argparse.Namespace) -> Decoding:
    """The decoding settings given (the others: the checkpoint's defaults); a value outside the page's bounds
    is a UserError naming it."""
    decoding = Decoding(**{name: getattr(args, name) for name in (*DECODING_OPTIONS, "do_sample")})
    check_bounds(dataclasses.asdict(decoding))
    return decoding


def job_key(args: argparse.Namespace, decoding: Decoding, data: bytes) -> str:
    """Names the job: the same model, task, weights, decoding, input file and column give the same key."""
    spec = {"model": args.model.strip(), "task": args.task, "dtype": args.dtype, "quantization": args.quantization,
            "decoding": decoding_dict(decoding), "text_column": args.text_column, "app_version": __version__,
            "input_sha256": hashlib.sha256(data).hexdigest()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def context(args: argparse.Namespace, state: PartialState) -> AppContext:
    """The app's context for a command: its settings, with room for one model as large as the machine holds
    (MT5_STUDIO_CACHE_MB still applies when set)."""
    settings = Settings.from_env()
    settings = replace(settings, cache_models=1,
                       cache_bytes=settings.cache_bytes if os.environ.get("MT5_STUDIO_CACHE_MB") else 2**62)
    assets = load_assets()
    if args.demo:
        with state.main_process_first():   # one process builds them, the others reuse them
            assets = assets.with_demo_models(build_demo(assets, settings.demo_dir))
    return AppContext.create(settings, assets, demo=args.demo)


def batch(args: argparse.Namespace) -> int:
    state = process_state()
    say = print if state.is_main_process else (lambda *a, **k: None)
    spec = task_named(args.task)   # ValueError naming the tasks
    if not spec.jobs:
        raise ValueError(f"{args.task} runs in its tab and its API endpoint only: batch rows hold text, not the "
                         "other inputs it needs")
    decoding = decoding_of(args)
    source = Path(args.input)
    if not source.is_file():
        raise ValueError(f"{source} does not exist: give the file of rows with --input")
    inputs = load_inputs(source, max_rows=sys.maxsize, text_column=args.text_column)
    if any(spec.missing(vars(x)) for x in inputs):
        columns = " and ".join(f"`{name}`" for name in spec.fields)
        raise ValueError(f"{args.task} needs {columns} on every row of {source.name}")
    key = job_key(args, decoding, source.read_bytes())
    about = {"task": args.task, "model_id": args.model.strip(), "decoding": decoding_dict(decoding),
             "source": source.name, "app_version": __version__}
    refuse_other_file(Path(args.output))
    existing(Path(args.output), key, about)   # another job's file is refused before a model is loaded
    ctx = context(args, state)
    device = args.device
    if device == "auto" and state.num_processes > 1:   # each process its own GPU ("cuda:1"), or the CPU
        device = "cpu" if state.device.type == "cpu" else str(state.device)
    try:
        loaded = ctx.load(args.task, args.model, args.dtype, device, args.quantization)
    except UserError as e:
        raise UserError(f"cannot run {args.task} with {args.model}: {e}") from None
    settings = job_settings(loaded, decoding)
    settings["request"]["device"] = "auto"   # the machine's, not the job's: every process writes the same record
    process_row = batch_process(args.task, loaded, decoding)

    def process(i: int) -> dict[str, Any]:
        x = inputs[i]
        try:   # one bad row must not end the job, as in the tab: the error is kept and the next run retries it
            output, error = process_row(BatchRow("", i, x.text, x.question, x.context, None, None, None, None)), None
        except Exception as e:  # noqa: BLE001
            output, error = None, f"{type(e).__name__}: {e}"
        return output_record(x, output, error, task=args.task, source=source.name, settings=settings)

    lengths = [len(row_text(x)) for x in inputs]
    outcome = run_job(args.output, key, lengths, process, about=about, state=state, progress=not args.no_progress)
    say(f"Wrote {args.output}: {outcome.total} rows ({outcome.done_before} done before, {outcome.ran} now on "
        f"{outcome.processes} process(es), {outcome.failed} failed) in {outcome.seconds:.1f} s", file=sys.stderr)
    if outcome.failed:
        say(f"{outcome.failed} row(s) failed (their `error` is in the file): run the same command again to retry "
            "them", file=sys.stderr)
        return 1
    return 0


def score(args: argparse.Namespace) -> int:
    """`python -m app score`: per-row scores into --output (resumable), corpus scores printed at the end."""
    state = process_state()
    say = print if state.is_main_process else (lambda *a, **k: None)
    wanted = parse_metrics(args.metric)
    source = Path(args.input)
    if not source.is_file():
        raise ValueError(f"{source} does not exist: give the file of outputs with --input")
    rows = read_rows(source, wanted, qe=args.qe)
    if "metricx" in wanted and not args.model.strip():
        raise ValueError("--metric metricx needs --model: a MetricX checkpoint such as "
                         "google/metricx-24-hybrid-large-v2p6")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    spec = {"metrics": wanted, "lang": args.lang, "model": args.model.strip(), "tokenizer": args.tokenizer,
            "qe": args.qe, "version": args.metricx_version, "dtype": args.dtype, "quantization": args.quantization,
            "input_sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "app_version": __version__}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    about = {"command": "score", "metrics": list(wanted), "source": source.name, "model": args.model.strip()}
    refuse_other_file(Path(args.output))
    existing(Path(args.output), key, about)
    scorers = [surface_scorer(rows, wanted, args.lang)]
    if "metricx" in wanted:
        loaded = load_metricx(args.model.strip(), args.tokenizer, args.dtype, args.quantization)
        scorers.append(metricx_scorer(*loaded, rows, qe=args.qe, version=args.metricx_version,
                                      batch_size=args.batch_size))

    def process(i: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            for scorer in scorers:
                out.update(scorer(i))
        except Exception as e:  # noqa: BLE001 - kept in the row; the next run retries it
            out["error"] = f"{type(e).__name__}: {e}"
        return out

    lengths = [len(r.source) + len(r.hypothesis) + len(r.reference) for r in rows]
    outcome = run_job(args.output, key, lengths, process, about=about, state=state, progress=not args.no_progress)
    if state.is_main_process:
        records = [json.loads(line) for line in Path(args.output).read_text(encoding="utf-8").splitlines() if line]
        for line in corpus_summary(rows, records, wanted, args.lang):
            say(line)
    say(f"Wrote {args.output}: {outcome.total} rows ({outcome.done_before} done before, {outcome.ran} now, "
        f"{outcome.failed} failed) in {outcome.seconds:.1f} s", file=sys.stderr)
    return 1 if outcome.failed else 0


def refuse_other_file(output: Path) -> None:
    """ValueError, the file left as it is, for an --output that exists and is not a job's output: any non-empty
    file whose first line is not one of the command's records. (Resuming reads a last line without a newline as
    torn by a kill and rewrites the file: a user's one-line file would be replaced.)"""
    if not output.is_file() or output.stat().st_size == 0:
        return
    with output.open("rb") as f:
        first = f.readline()
    try:
        rec = read_json_line(first, f"{output} line 1")
    except ValueError:
        rec = None
    if not (isinstance(rec, dict) and isinstance(rec.get("index"), int) and "job" in rec):
        raise ValueError(f"{output} exists and is not the output of `python -m app batch` (its first line is not "
                         "one of its records): give another --output; the file was left as it is")


def row_text(x: BatchInput) -> str:
    return x.text or f"{x.question} {x.context}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "train":
            return training.run(args, context)
        return score(args) if args.command == "score" else batch(args)
    except (ValueError, UserError) as e:   # bad input: said once, by the main process, with what to do
        if process_state().is_main_process:
            print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    finally:   # a gloo group left for the interpreter's exit can abort it ("terminate called without an active
        process_state().destroy_process_group()   # exception", SIGABRT, seen in CI): it is closed here


# ---------------------------------------------------------------------------------------------------------------
# The commands the Batch tab shows for a large file


def command_lines(task: str, model: str, input_name: str, decoding: Decoding | None = None, *, dtype: str = "auto",
                  quantization: str = "none", demo: bool = False, processes: int = 8) -> dict[str, list[str]]:
    """The commands that run `task` with `model` over the file `input_name` with these settings: on one process,
    on one machine's `processes` GPUs, and on two such machines (one line per machine). Shell-quoted."""
    args = ["--model", model, "--task", task, "--input", input_name, "--output", f"{Path(input_name).stem}.out.jsonl"]
    if dtype not in ("auto", ""):
        args += ["--dtype", dtype]
    if quantization not in ("none", ""):
        args += ["--quantization", quantization]
    if demo:
        args.append("--demo")
    for name, value in dataclasses.asdict(decoding or Decoding()).items():
        if value is None or value is False or (name == "seed" and float(value) < 0):
            continue
        option = "--" + name.replace("_", "-")
        if value is True:
            args.append(option)
        else:
            kind = DECODING_OPTIONS[name]
            args += [option, str(int(value)) if kind is int else f"{float(value):g}"]
    tail = shlex.join(["-m", "app", "batch", *args])
    # --multi_gpu: accelerate 1.x starts several processes only through torchrun (its --cpu starts one)
    two = f"accelerate launch --multi_gpu --num_processes {2 * processes} --num_machines 2 " \
          "--main_process_ip 10.0.0.1 --main_process_port 29500"
    return {
        "One process": [shlex.join(["python", "-m", "app", "batch", *args])],
        f"One machine, {processes} GPUs (one process each)": [
            f"accelerate launch --multi_gpu --num_processes {processes} {tail}"],
        "Two machines (run one line on each; 10.0.0.1 is the first machine's address; the output's folder must be "
        "shared)": [f"{two} --machine_rank {rank} {tail}" for rank in (0, 1)],
    }
