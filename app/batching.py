"""Visitors who summarize at the same time share one batched decode.

A decode reads every weight of the model once per step whatever the batch, so on a CPU eight rows cost little more
per step than one: serving eight visitors in one batch gives each their summary in a fraction of the time they
would wait in a line. `Batcher.stream(...)` is a drop-in for `model.textgen.stream_text`; the app context owns one
batcher (`AppContext.create` gives it to the model cache, which hands it to every model it loads):

* requests for the same model with the same decoding settings (greedy, or beam search with the same beams,
  penalties and lengths) that arrive until 100 ms pass without a new one (at most 300 ms), or while that model
  is busy with an earlier batch,
  join one batch (at most `max_batch` rows); each row stops at its own end of sequence;
* greedy rows stream: every visitor gets their own text increments as the batch's steps come out (beam search
  yields once, at the end, as it does alone);
* sampling runs alone (a seeded sample must not depend on who else asked);
* one decode per model at a time: the next batch forms while the current one runs;
* plain greedy settings (`model.rolling.joinable`): a visitor who arrives while such a decode runs joins it at
  its next step (`model.rolling.RollingGreedy`), if it has a free row, instead of waiting for it to end.

The tokens are those of a solo run: the encoder masks the padding of shorter inputs and every row is decoded with
the same greedy or beam rule (tests/test_batching.py compares them).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from model.generation import encode_for_generation, sample_steps
from model.rolling import RollingGreedy, joinable
from model.textgen import TextStreamer, encode_inputs, generate_text, stream_text

_END = object()
log = logging.getLogger("mt5studio")


@dataclass
class _Request:
    text: str
    out: queue.Queue = field(default_factory=queue.Queue)
    linger_s: float = 0.05   # how long the visitor's stream gathers pieces into one update (grows with the batch)


@dataclass
class _Group:
    key: tuple
    requests: list[_Request] = field(default_factory=list)


@dataclass
class _Rolling:
    """A running decode that takes new rows: those waiting to join, and how many rows it decodes now."""
    inbox: list[_Request] = field(default_factory=list)
    rows: int = 0


class Batcher:
    """Groups concurrent generation requests per (model, settings) into batched decodes."""

    def __init__(self, max_batch: int = 8, window_s: float = 0.1, max_wait_s: float = 0.3,
                 linger_s: float = 0.3):
        self.max_batch = max(1, int(max_batch))   # 1 serves every visitor alone
        self.window_s, self.max_wait_s = window_s, max_wait_s
        self.linger_s = linger_s   # the longest a visitor's stream gathers pieces into one update
        self._lock = threading.Lock()
        self._forming: dict[tuple, _Group] = {}
        self._rolling: dict[tuple, _Rolling] = {}
        self.joined = 0                    # requests that joined a decode already running
        self._model_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.batch_sizes: list[int] = []   # of every decode run, for benchmarks and tests

    def stream(self, model, tokenizer, text: str, max_input_tokens: int, keep_sentinels: bool = False,
               **gen: Any) -> Iterator[str]:
        """Text increments for `text`, as `stream_text` gives them, decoded together with concurrent requests."""
        cfg = model.generation_config.updated(**gen)
        cfg.validate()
        if cfg.do_sample or self.max_batch <= 1:
            yield from stream_text(model, tokenizer, text, max_input_tokens, keep_sentinels, **gen)
            return
        key = (id(model), id(tokenizer), max_input_tokens, keep_sentinels, tuple(sorted(gen.items())))
        request = _Request(text)
        with self._lock:
            running = self._rolling.get(key)
            lead = False
            if running is not None and running.rows + len(running.inbox) < self.max_batch:
                running.inbox.append(request)   # taken in at the decode's next step
                self.joined += 1
            else:
                group = self._forming.get(key)
                lead = group is None or len(group.requests) >= self.max_batch
                if lead:
                    group = self._forming[key] = _Group(key)
                group.requests.append(request)
        if lead:
            threading.Thread(target=self._run, args=(group, model, tokenizer, max_input_tokens, keep_sentinels,
                                                     gen), daemon=True, name="mt5studio-batch").start()
        while True:
            pieces, done = drain(request.out, request.linger_s)
            if pieces:
                yield pieces
            if done:
                return

    def gather(self, group: _Group) -> None:
        """Waits until no request has joined for `window_s` (a web server hands over visitors who pressed
        together over some tens of milliseconds), at most `max_wait_s`, or until the batch is full."""
        deadline = time.monotonic() + self.max_wait_s
        seen, quiet_since = 0, time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                n = len(group.requests)
            if n >= self.max_batch:
                return
            if n != seen:
                seen, quiet_since = n, time.monotonic()
            elif time.monotonic() - quiet_since >= self.window_s:
                return
            time.sleep(0.005)

    def _model_lock(self, model) -> threading.Lock:
        with self._lock:
            lock = self._model_locks.get(model)
            if lock is None:
                lock = self._model_locks[model] = threading.Lock()
            return lock

    def _run(self, group: _Group, model, tokenizer, max_input_tokens: int, keep_sentinels: bool,
             gen: dict[str, Any]) -> None:
        cfg = model.generation_config.updated(**gen)
        rolling = joinable(cfg) and not getattr(model, "hf_device_map", None)
        self.gather(group)                      # let the visitors who pressed at about the same moment join
        with self._model_lock(model):           # while an earlier batch runs, this one keeps filling
            with self._lock:
                if self._forming.get(group.key) is group:
                    del self._forming[group.key]
                requests = list(group.requests)
                if rolling:   # from now on arrivals join this decode: no moment when they would form another
                    self._rolling[group.key] = _Rolling(rows=len(requests))
            start, served, most = time.perf_counter(), list(requests), len(requests)
            index = len(self.batch_sizes)   # recorded before anyone's stream ends (tests read it then)
            self.batch_sizes.append(most)
            try:
                with torch.inference_mode():
                    if rolling:
                        most = self._roll(group.key, model, tokenizer, served, max_input_tokens, keep_sentinels,
                                          cfg, index)
                    else:
                        lingering(requests, len(requests), self.linger_s)
                        decode(model, tokenizer, requests, max_input_tokens, keep_sentinels, gen)
            except BaseException as e:  # noqa: BLE001 - every visitor still waiting gets the error
                for r in served + self._close(group.key):
                    r.out.put(e)
            log.info("batched decode: %d request(s) in %.2f s (at most %d at once)", len(served),
                     time.perf_counter() - start, most)

    def _roll(self, key: tuple, model, tokenizer, served: list[_Request], max_input_tokens: int,
              keep_sentinels: bool, cfg, index: int) -> int:
        """A decode that visitors join while it runs (`RollingGreedy`): those in its inbox are taken in before
        each step. Ends when no row is left and nobody waits. Adds the joiners to `served` (the requests it
        started with); returns the most rows decoded at once, also kept in `batch_sizes[index]`."""
        run, streamers, most = RollingGreedy(model, cfg), {}, 0
        pending = list(served)
        while True:
            if pending:
                enc = encode_inputs(tokenizer, [r.text for r in pending], max_input_tokens, model.device)
                run.join(enc.input_ids, enc.attention_mask, pending)
                for r in pending:
                    streamers[id(r)] = TextStreamer(tokenizer, keep_sentinels)
                most = self.batch_sizes[index] = max(most, len(run))
                lingering(run.tags, len(run), self.linger_s)
            for r, token, done in run.step():
                streamer = streamers[id(r)]
                piece = streamer.push(token)
                if piece:
                    r.out.put(piece)
                if done:   # its end of sequence or its token limit
                    finish(streamer, r)
                    del streamers[id(r)]
            with self._lock:
                state = self._rolling[key]
                pending, state.inbox = state.inbox, []
                served += pending
                state.rows = len(run) + len(pending)
                if not state.rows:
                    del self._rolling[key]
                    return most

    def _close(self, key: tuple) -> list[_Request]:
        """After a failed decode: no one joins it any more; returns those who were waiting to."""
        with self._lock:
            state = self._rolling.pop(key, None)
        return state.inbox if state is not None else []


def lingering(requests: list[_Request], batch: int, cap: float = 0.3) -> None:
    """The updates of all visitors together stay ~25 a second (each at most `cap` seconds apart)."""
    for r in requests:
        r.linger_s = min(cap, 0.04 * batch)


def decode(model, tokenizer, requests: list[_Request], max_input_tokens: int, keep_sentinels: bool,
           gen: dict[str, Any]) -> None:
    """One batched decode; puts each row's text increments on its request's queue, then the end mark as soon as
    that row is done (a visitor whose summary ended early does not wait for the longest row)."""
    cfg = model.generation_config.updated(**gen)
    texts = [r.text for r in requests]
    if cfg.num_beams > 1 or cfg.num_return_sequences > 1:
        outs = generate_text(model, tokenizer, texts, max_input_tokens, **gen)
        step = cfg.num_return_sequences
        for i, r in enumerate(requests):
            r.out.put(outs[i * step])   # the first sequence, as stream_text gives it
            r.out.put(_END)
        return
    enc = encode_inputs(tokenizer, texts, max_input_tokens, model.device)
    state = encode_for_generation(model, enc.input_ids, enc.attention_mask, 1)
    streamers = [TextStreamer(tokenizer, keep_sentinels) for _ in requests]
    running = [True] * len(requests)
    eos = set(cfg.eos_ids)
    for tokens, _ in sample_steps(state, cfg, None):
        for i, token in enumerate(tokens.tolist()):
            if not running[i]:
                continue
            piece = streamers[i].push(int(token))
            if piece:
                requests[i].out.put(piece)
            if token in eos:
                running[i] = False
                finish(streamers[i], requests[i])
    for i, r in enumerate(requests):
        if running[i]:
            finish(streamers[i], r)


def drain(out: queue.Queue, linger_s: float = 0.05) -> tuple[str, bool]:
    """What a request's queue holds within `linger_s` of its first item (waits for that one), joined, and
    whether it ended. A visitor's page gets a few updates a second, not one per token: eight streams of
    per-token updates would take the CPU the decode needs, and nobody reads faster."""
    pieces, item = [], out.get()
    deadline = time.monotonic() + linger_s
    while True:
        if item is _END:
            return "".join(pieces), True
        if isinstance(item, BaseException):
            raise item
        pieces.append(item)
        try:
            item = out.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return "".join(pieces), False


def finish(streamer: TextStreamer, request: _Request) -> None:
    piece = streamer.end()
    if piece:
        request.out.put(piece)
    request.out.put(_END)


def batched(settings: Any) -> dict[str, Any]:
    """Event options for a summarization event: its own queue slots, as many as visitors a batch takes (they
    wait in the batcher, not in Gradio's line; a decode runs one at a time per model). The batcher itself lives
    on the app context (AppContext.create hands it to the model cache, sized by MT5_STUDIO_BATCH_VISITORS)."""
    return {"concurrency_id": "summarize", "concurrency_limit": max(settings.concurrency, settings.batch_visitors)}
