"""Data-parallel jobs over a file of rows, under `accelerate launch` or alone: split, run, shard, resume, merge.

Task-agnostic: the caller gives the number of rows, their lengths, and `process(index) -> dict` (one output
record's fields); this module decides which process runs which rows and writes them. The app's batch command
(`python -m app batch`) is one caller.

    output.jsonl          the merged result: one JSON record per row, in input order (written last, atomically)
    output.jsonl.shards/  while a job runs: `rank-R.jsonl`, one per process, appended a record at a time

Every record carries `index` (the row's position in the input) and `job` (the caller's key: the same key means
the same model, task, settings and input). A run first reads the output and every shard there: rows already
present without an `error` are skipped, so a killed job re-run finishes the rest (a torn last line is dropped);
records of another job are refused. The pending rows are split between the processes with
`PartialState().split_between_processes`, each process runs its share longest first, and after
`wait_for_everyone()` the main process merges output and shards by index: the file is byte for byte what one
process writes, however many ran it. Across machines the output's folder must be one they all see (a shared
file system): the shards are how the processes hand their rows to the main one.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from tqdm import tqdm

Record = dict[str, Any]


class ForeignOutput(ValueError):
    """The output (or its shards) holds records of another job: resuming would mix two jobs' rows."""


@dataclass(frozen=True)
class Outcome:
    """What one run did: rows in the job, rows found done, rows run now (all processes), rows failed."""
    total: int
    done_before: int
    ran: int
    failed: int
    seconds: float
    processes: int


def process_state() -> PartialState:
    """This process's place in the launch. `PartialState()` groups the processes of `accelerate launch` over
    GPUs; without a GPU (or with ACCELERATE_USE_CPU, as `--cpu` sets) it must be told to group CPU processes
    (gloo), or each of them believes it runs alone and does every row."""
    cpu = not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    return PartialState(cpu=cpu)


def shard_dir(output: Path) -> Path:
    return output.with_name(output.name + ".shards")


def read_records(path: Path) -> Iterator[Record]:
    """The JSON records of a JSONL file; a last line cut short (a process killed mid-write) is skipped."""
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except RecursionError:   # Python's parser recurses once per level: `[[[[…` is not a JSONDecodeError
            raise ValueError(f"{path} line {number} is nested too deeply to be a batch record: it is not this "
                             "command's output; give another --output") from None
        except json.JSONDecodeError:
            if number == len(lines):   # no newline after it: torn by a kill, the row runs again
                continue
            raise ValueError(f"{path} line {number} is not JSON: delete the file to start the job over") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("index"), int):
            raise ValueError(f"{path} line {number} is not a batch record (no `index`): it is not this "
                             "command's output; give another --output")
        yield rec


def existing(output: Path, key: str, about: Mapping[str, Any]) -> dict[int, Record]:
    """The records already written for this job (output and shards), one per index, a successful one preferred.
    `about`: fields every record carries that describe the job (model, task, ...), named when another job's
    file is refused (ForeignOutput)."""
    found: dict[int, Record] = {}
    files = [output] if output.is_file() else []
    if shard_dir(output).is_dir():
        files += sorted(shard_dir(output).glob("*.jsonl"))
    for path in files:
        for rec in read_records(path):
            if rec.get("job") != key:
                raise ForeignOutput(foreign_message(output, path, rec, about))
            if rec["index"] not in found or (found[rec["index"]].get("error") and not rec.get("error")):
                found[rec["index"]] = rec
    return found


def foreign_message(output: Path, path: Path, rec: Record, about: Mapping[str, Any]) -> str:
    show = lambda value: json.dumps(value, ensure_ascii=False)
    differs = [f"{name} {show(rec.get(name))} there, {show(value)} now"
               for name, value in about.items() if rec.get(name) != value]
    what = "; ".join(differs) if differs else "same model and task, but other input rows or options"
    return (f"{path} was written by another job ({what}): give another --output, or delete {output} (and "
            f"{shard_dir(output).name}/ beside it) to start over")


def done(rec: Record | None) -> bool:
    return rec is not None and not rec.get("error")


def deal(pending: list[int], lengths: list[int], processes: int) -> list[int]:
    """`pending` rearranged so that `split_between_processes`' contiguous slices get alike lengths: sorted
    longest first, dealt round-robin into one pile per process (pile sizes as accelerate slices them: the first
    `len % processes` one longer), piles concatenated. Any arrangement is correct; this one balances."""
    ordered = sorted(pending, key=lambda i: (-lengths[i], i))
    return [i for p in range(processes) for i in ordered[p::processes]]


def run_job(output: str | Path, key: str, lengths: list[int], process: Callable[[int], Record], *,
            about: Mapping[str, Any] | None = None, state: PartialState | None = None,
            progress: bool = True) -> Outcome:
    """Runs `process(i)` for every row `i` (0 ≤ i < len(lengths)) not yet done, on this process's share, and
    (main process) merges everything into `output`. `process` returns the record's fields (a failed row: with
    an `error`, retried by the next run); `index` and `job` are added here. `lengths` (characters, say) order
    each share longest first. Raises ForeignOutput before anything is written when `output` is another job's."""
    output, state = Path(output), state or process_state()
    start, total = time.monotonic(), len(lengths)
    found = existing(output, key, about or {})
    pending = [i for i in range(total) if not done(found.get(i))]
    state.wait_for_everyone()   # everyone has read the files before any process appends to them
    shards = shard_dir(output)
    if state.is_main_process:
        shards.mkdir(parents=True, exist_ok=True)
        print(f"{total} rows: {total - len(pending)} done before, {len(pending)} to run on "
              f"{state.num_processes} process(es)", file=sys.stderr)
    state.wait_for_everyone()
    ran = failed = 0
    with state.split_between_processes(deal(pending, lengths, state.num_processes)) as mine:
        with open_shard(shards / f"rank-{state.process_index}.jsonl") as shard:
            bar = tqdm(mine, total=len(mine), unit="row", disable=not (progress and state.is_main_process),
                       desc=f"process 1 of {state.num_processes}", file=sys.stderr)
            for i in bar:
                rec = {"index": i, **process(i), "job": key}
                shard.write(json.dumps(rec, ensure_ascii=False) + "\n")
                shard.flush()
                ran, failed = ran + 1, failed + bool(rec.get("error"))
    counts = gather_counts(state, ran, failed)
    state.wait_for_everyone()
    if state.is_main_process:
        merge(output, key, total)
    state.wait_for_everyone()   # no process ends (and tears down its gloo threads) while the output is written
    return Outcome(total, total - len(pending), counts[0], counts[1], time.monotonic() - start, state.num_processes)


def open_shard(path: Path):
    """This process's shard for appending, a torn last line (from a kill) cut off first."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a", encoding="utf-8")


def gather_counts(state: PartialState, ran: int, failed: int) -> tuple[int, int]:
    """Rows run and failed, summed over the processes."""
    if state.num_processes == 1:
        return ran, failed
    pairs = gather_object([(ran, failed)])
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def merge(output: Path, key: str, total: int) -> None:
    """Writes `output` from the output and the shards, in index order, then removes the shards."""
    found = existing(output, key, {})
    missing = [i for i in range(total) if i not in found]
    if missing:
        raise RuntimeError(f"rows {missing[:10]} were run by no process: run the command again to finish them")
    tmp = output.with_name(output.name + ".tmp")
    write_lines(tmp, (json.dumps(found[i], ensure_ascii=False) for i in range(total)))
    os.replace(tmp, output)
    shutil.rmtree(shard_dir(output), ignore_errors=True)


def write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
