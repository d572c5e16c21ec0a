"""Closing the loop: `python -m app train` fine-tunes a checkpoint on the linguists' accepted corrections, labels or
post-edits (app.annotation.datasets), and measures the new model against the old one on the held-out split.

    python -m app train --model bigscience/mt0-small --task summarization --from-annotations --output runs/a
    python -m app train --model ... --task summarization --from-campaign CAMPAIGN_ID --lora --output runs/b
    accelerate launch --num_processes 2 -m app train ...        # several processes (gloo on the CPU)

Before anything trains, the dataset's counts are printed (inputs, duplicates merged, disagreements settled or
dropped, train and held-out sizes). Training is model.training's (accelerate, AdamW, our LoRA); a run stopped by
the time limit or Ctrl-C keeps its last checkpoint and the same command resumes it. At the end the result is in
`OUTPUT/final` (LoRA: the adapter and a merged checkpoint), with the run's settings, the data's fingerprint and its
losses in `training.json`; a compare job "old vs new" on the held-out split (references: the linguists' targets)
is created and run in the annotation store, ready to be judged blind, and its chrF++ and BLEU are printed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model import MT5Tokenizer, load_model
from model.batch import process_state
from model.training import LoraSettings, TrainSettings, seq2seq_features, train

from .annotation.api import batch_process
from .annotation.batch import BatchInput, job_settings
from .annotation.comparisons import create_compare_job, run_compare_job
from .annotation.datasets import Dataset, build, from_annotations, from_campaign, write
from .annotation.job_metrics import compare_job_metrics
from .annotation.rights import Identity
from .annotation.store import AnnotationStore, default_db_path
from .limits import (MAX_TRAIN_EXAMPLES, MAX_TRAIN_SECONDS, MAX_TRAIN_SOURCE_TOKENS, MAX_TRAIN_STEPS,
                     MAX_TRAIN_TARGET_TOKENS)
from .tasks import Decoding

OPERATOR = Identity("command line", admin=True)   # who runs the command owns the machine: an admin


def add_arguments(sub) -> None:
    t = sub.add_parser("train", help="fine-tune on accepted corrections, labels or post-edits; compare old and new")
    t.add_argument("--model", required=True, help="the checkpoint to start from (Hub id or folder)")
    t.add_argument("--task", required=True, help="the app task the data is for, e.g. summarization")
    where = t.add_mutually_exclusive_group(required=True)
    where.add_argument("--from-annotations", action="store_true", help="the Annotations store's corrections")
    where.add_argument("--from-campaign", help="a campaign's id: its post-edits, labels or relabelled entities")
    where.add_argument("--input", help="a .jsonl of {\"input\", \"target\"} rows")
    t.add_argument("--output", required=True, help="the run's folder (re-running resumes it)")
    t.add_argument("--db", default="", help="the annotation store (default: MT5_STUDIO_DB, else data/annotations.db)")
    t.add_argument("--lora", action="store_true", help="train LoRA adapters on q and v (else the whole model)")
    t.add_argument("--lora-r", type=int, default=8)
    t.add_argument("--learning-rate", type=float, default=None, help="default 3e-4 with LoRA, 1e-4 without")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    t.add_argument("--no-compare", action="store_true", help="no old-vs-new compare job at the end")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--demo", action="store_true", help="the app's tiny demo checkpoints (demo/generation, ...)")


def dataset_of(args: argparse.Namespace, store: AnnotationStore) -> Dataset:
    if args.input:
        rows = [json.loads(line) for line in Path(args.input).read_text(encoding="utf-8").splitlines() if line]
        bad = [i for i, r in enumerate(rows, 1) if not isinstance(r, dict) or not {"input", "target"} <= set(r)]
        if bad:
            raise ValueError(f"{args.input} line {bad[0]}: each line needs \"input\" and \"target\"")
        return build(((str(r["input"]), str(r["target"])) for r in rows), Path(args.input).name, args.task)
    if args.from_campaign:
        return from_campaign(store, args.from_campaign, OPERATOR)
    return from_annotations(store, args.task)


def settings_of(args: argparse.Namespace) -> TrainSettings:
    if args.max_steps is not None and not 1 <= args.max_steps <= MAX_TRAIN_STEPS:
        raise ValueError(f"--max-steps must be 1 to {MAX_TRAIN_STEPS:,} (app/limits.py)")
    seconds = None if args.max_minutes is None else args.max_minutes * 60
    if seconds is not None and not 0 < seconds <= MAX_TRAIN_SECONDS:
        raise ValueError(f"--max-minutes must be above 0 and at most {MAX_TRAIN_SECONDS // 60} (app/limits.py)")
    lr = args.learning_rate or (3e-4 if args.lora else 1e-4)
    return TrainSettings(learning_rate=lr, batch_size=args.batch_size, epochs=args.epochs, max_steps=args.max_steps,
                         max_seconds=seconds or MAX_TRAIN_SECONDS,
                         lora=LoraSettings(r=args.lora_r) if args.lora else None)


def run(args: argparse.Namespace, context) -> int:
    """The `train` command; `context(args, state)` gives the app's context (cli.context)."""
    state = process_state()
    say = print if state.is_main_process else (lambda *a, **k: None)
    settings = settings_of(args)
    store = AnnotationStore(Path(args.db) if args.db else default_db_path())   # the data, and the compare job
    try:
        data = dataset_of(args, store)
        say(data.summary())
        if not data.train:
            raise ValueError("nothing to train on: no example outside the held-out split")
        if len(data.train) > MAX_TRAIN_EXAMPLES:
            raise ValueError(f"{len(data.train):,} examples: the limit is {MAX_TRAIN_EXAMPLES:,} (app/limits.py)")
        out = Path(args.output)
        if state.is_main_process:
            write(data, out / "data")
        ctx = context(args, state)
        where = str(ctx.assets.folders.get(args.model, args.model))   # demo/… names: their folders
        model = load_model(where, task="generation")
        tok = MT5Tokenizer.from_pretrained(where)
        features = seq2seq_features(tok, [e.input for e in data.train], [e.target for e in data.train],
                                    MAX_TRAIN_SOURCE_TOKENS, MAX_TRAIN_TARGET_TOKENS)
        about = {"model": args.model, "task": args.task, "data": data.source, "data_fingerprint": data.fingerprint(),
                 "counts": data.counts}
        report = None if args.no_progress else (lambda p: say(
            f"step {p.step}/{p.total_steps} loss {p.loss:.4f} {p.elapsed:.0f} s"
            + (f", about {p.remaining:.0f} s left" if p.remaining is not None else ""), file=sys.stderr))
        result = train(model, features, settings, out, tokenizer=tok, about=about, progress=report)
        if not result.finished:
            say(f"Stopped ({result.stopped_by}) at step {result.steps} of {result.total_steps}: the checkpoint is in "
                f"{result.checkpoint}; run the same command to resume.")
            return 0
        say(f"Trained {result.steps} steps in {result.seconds:.0f} s; the new model is in {result.saved['model']}")
        if state.is_main_process and not args.no_compare and data.heldout:
            say(compare_old_new(ctx, store, args, data, str(result.saved["model"])))
        return 0
    finally:
        store.close()


def compare_old_new(ctx, store: AnnotationStore, args, data: Dataset, new: str) -> str:
    """A compare job of the starting checkpoint against the new one on the held-out split (the linguists'
    targets as references), run now; its metrics as a line."""
    decoding = Decoding()
    loaded = [ctx.load(args.task, source) for source in (args.model, new)]
    systems = [job_settings(m, decoding) for m in loaded]
    inputs = [BatchInput(e.input, reference=e.target) for e in data.heldout]
    job = create_compare_job(store, inputs, task=args.task, systems=systems, source=f"{Path(new).name} held-out")
    processes = [batch_process(args.task, m, decoding) for m in loaded]
    run_compare_job(store, job.id, lambda n, row: processes[n - 1](row))
    m = compare_job_metrics(store, job.id)
    scores = "; ".join(f"{key} old {m.corpus[0][key]['score']:.1f} new {m.corpus[1][key]['score']:.1f} "
                       f"(p {pair['p_value']:.3f})" for key, pair in m.paired.items())
    return f"Compare job {job.id} (old vs new, {m.rows} held-out rows, in the Batch tab to judge blind): {scores}"

