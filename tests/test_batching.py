"""Concurrent visitors' summaries decoded in one batch (app/batching.py): the same text as alone, streamed to each,
rows ending at their own end, sampling kept alone, errors reaching every visitor of the batch."""
import threading
import time

import pytest

from app.assets import load_assets
from app.batching import Batcher
from app.models import ModelCache, ModelRequest
from app.tasks import Decoding, stream_summary
from model.textgen import stream_text
from model.tiny import build_demo_checkpoints

ASSETS = load_assets()
TEXTS = ["Scientists in Kenya have developed a low-cost water filter.",
         "El ayuntamiento de Valencia aprobó ayer un plan para plantar diez mil árboles en los barrios.",
         "日本の研究者が新しい電池を開発した。",
         "В Новосибирске открылся новый научный центр, посвящённый изучению климата Сибири.",
         "مرحبا بالعالم", "Ein kurzer Text.", "Un texte un peu plus long sur la météo à Paris et à Lyon ce week-end.",
         "शहर में आज बारिश हुई।"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    demo = build_demo_checkpoints(tmp_path_factory.mktemp("demo"), ASSETS.example_texts())
    return ModelCache().get(ModelRequest(str(demo["generation"]), "generation"))


def together(batcher, loaded, texts, **gen):
    """Every text streamed at once from its own thread (as visitors' requests are); the pieces each got."""
    pieces: dict[int, list[str]] = {}
    errors: dict[int, BaseException] = {}
    start = threading.Barrier(len(texts))

    def visit(i):
        start.wait()
        try:
            pieces[i] = list(batcher.stream(loaded.model, loaded.tokenizer, texts[i], 512, **gen))
        except BaseException as e:  # noqa: BLE001
            errors[i] = e

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return pieces, errors


@pytest.mark.parametrize("gen", [{"max_new_tokens": 24}, {"max_new_tokens": 24, "no_repeat_ngram_size": 0},
                                 {"max_new_tokens": 12, "num_beams": 3,
                                                           "no_repeat_ngram_size": 2, "length_penalty": 0.6}])
def test_a_batch_gives_each_visitor_their_solo_text(loaded, gen):
    solo = ["".join(stream_text(loaded.model, loaded.tokenizer, t, 512, **gen)) for t in TEXTS]
    # updates at most 20 ms apart: the tiny model decodes 24 steps of eight rows within the 0.3 s a deployment
    # gathers pieces for, on a fast moment, and the streaming check below would then see one update each
    batcher = Batcher(max_batch=8, window_s=0.2, linger_s=0.02)
    # and each decoder step takes 20 ms at least, so on a busy machine too the visitors' readers see the text
    # arrive in several updates (the tiny model alone can finish before a starved reader thread wakes)
    slow = loaded.model.decoder.register_forward_hook(lambda *args: time.sleep(0.02))
    try:
        pieces, errors = together(batcher, loaded, TEXTS, **gen)
    finally:
        slow.remove()
    assert not errors
    assert ["".join(pieces[i]) for i in range(len(TEXTS))] == solo
    assert batcher.batch_sizes == [8]                    # one decode for the eight of them
    if "num_beams" not in gen:   # greedy streams: the increments of a solo run, joined where they queued up
        alone = [list(stream_text(loaded.model, loaded.tokenizer, t, 512, **gen)) for t in TEXTS]
        for i in range(len(TEXTS)):
            assert coarsens(pieces[i], alone[i]), (pieces[i], alone[i])
        assert sum(len(p) for p in pieces.values()) > len(TEXTS)   # streamed in several updates, not once


def coarsens(pieces: list[str], increments: list[str]) -> bool:
    """Whether every piece is a run of consecutive increments (nothing lost, reordered or split)."""
    bounds, at = {0}, 0
    for inc in increments:
        at += len(inc)
        bounds.add(at)
    at = 0
    for piece in pieces:
        at += len(piece)
        if not piece or at not in bounds:
            return False
    return at == max(bounds)


def test_a_stream_joins_what_queued_up_and_ends_at_the_end_mark():
    import queue

    from app.batching import _END, drain

    out = queue.Queue()
    for item in ("Hel", "lo", " wor"):
        out.put(item)
    assert drain(out) == ("Hello wor", False)
    out.put("ld")
    out.put(_END)
    assert drain(out) == ("ld", True)
    out.put(ValueError("max_new_tokens must be positive"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        drain(out)
    assert coarsens(["ab", "c"], ["a", "b", "c"]) and not coarsens(["a", "bc"], ["ab", "c"])


def test_batches_hold_at_most_max_batch_and_settings_do_not_mix(loaded):
    batcher = Batcher(max_batch=3, window_s=0.2)
    pieces, errors = together(batcher, loaded, TEXTS, max_new_tokens=8)
    assert not errors and sorted(batcher.batch_sizes) == [2, 3, 3]
    other = Batcher(max_batch=8, window_s=0.2)
    out: dict = {}

    def visit(i, n):
        out[i] = "".join(other.stream(loaded.model, loaded.tokenizer, TEXTS[i], 512, max_new_tokens=n))

    threads = [threading.Thread(target=visit, args=(i, 6 if i % 2 else 9)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(other.batch_sizes) == [2, 2]           # two settings: two batches
    for i in range(4):
        n = 6 if i % 2 else 9
        assert out[i] == "".join(stream_text(loaded.model, loaded.tokenizer, TEXTS[i], 512, max_new_tokens=n))


def test_sampling_runs_alone_and_errors_reach_everyone(loaded):
    batcher = Batcher(max_batch=8, window_s=0.1)
    seeded = {"do_sample": True, "seed": 7, "max_new_tokens": 10, "top_k": 20}
    pieces, errors = together(batcher, loaded, TEXTS[:3], **seeded)
    assert not errors and batcher.batch_sizes == []      # never batched
    assert "".join(pieces[0]) == "".join(stream_text(loaded.model, loaded.tokenizer, TEXTS[0], 512, **seeded))
    _, errors = together(batcher, loaded, TEXTS[:3], max_new_tokens=-5)
    assert len(errors) == 3 and all("max_new_tokens" in str(e) for e in errors.values())


def test_the_summarization_task_goes_through_the_app_contexts_batcher(loaded, tmp_path):
    """AppContext.create gives the model cache one batcher, which every loaded model carries; without one (a
    bare ModelCache) a summary decodes alone."""
    import dataclasses

    from app.assets import load_assets
    from app.context import AppContext
    from app.settings import Settings

    ctx = AppContext.create(Settings(batch_visitors=5), load_assets())
    assert isinstance(ctx.cache.batcher, Batcher) and ctx.cache.batcher.max_batch == 5
    batcher = Batcher(max_batch=8, window_s=0.05)
    *_, last = stream_summary(dataclasses.replace(loaded, batcher=batcher), TEXTS[1], Decoding(max_new_tokens=10))
    assert last.done and batcher.batch_sizes == [1]
    assert last.text == "".join(stream_text(loaded.model, loaded.tokenizer, TEXTS[1], 512, max_new_tokens=10))
    assert loaded.batcher is None
    *_, alone = stream_summary(loaded, TEXTS[1], Decoding(max_new_tokens=10))
    assert alone.text == last.text


def test_a_batch_waits_while_visitors_keep_arriving_and_starts_after_a_quiet_spell(loaded):
    """Arrivals 0.1 s apart join one batch (the quiet spell is 0.4 s); one after a 1.5 s pause gets the next."""
    import time

    batcher = Batcher(max_batch=8, window_s=0.4, max_wait_s=3.0)
    delays = [0.0, 0.1, 0.2, 0.3, 1.8]
    out: dict = {}
    start = threading.Barrier(len(delays))

    def visit(i):
        start.wait()
        time.sleep(delays[i])
        out[i] = "".join(batcher.stream(loaded.model, loaded.tokenizer, TEXTS[i], 512, max_new_tokens=6))

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(len(delays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert batcher.batch_sizes == [4, 1]
    assert [out[i] for i in range(len(delays))] == [
        "".join(stream_text(loaded.model, loaded.tokenizer, TEXTS[i], 512, max_new_tokens=6))
        for i in range(len(delays))]


def test_visitors_who_arrive_while_a_greedy_decode_runs_join_it_at_its_next_step(loaded, monkeypatch):
    """A runs alone; B and C press while it decodes: they join A's decode (no second batch, no wait for A's end)
    and everyone gets their solo text. Steps are slowed to 20 ms so A is surely still running."""
    import time

    from model.rolling import RollingGreedy

    step = RollingGreedy.step

    def slow_step(self):
        time.sleep(0.02)
        return step(self)

    monkeypatch.setattr(RollingGreedy, "step", slow_step)
    batcher = Batcher(max_batch=8, window_s=0.05, max_wait_s=0.1)
    gen = {"max_new_tokens": 40, "no_repeat_ngram_size": 0}   # plain greedy (the demo checkpoint sets 3)
    out: dict = {}
    first_piece = threading.Event()
    firsts: dict = {}

    def visit(i):
        pieces = []
        for piece in batcher.stream(loaded.model, loaded.tokenizer, TEXTS[i], 512, **gen):
            pieces.append(piece)
            firsts.setdefault(i, time.monotonic())
            first_piece.set()
        out[i] = ("".join(pieces), time.monotonic())

    a = threading.Thread(target=visit, args=(0,))
    a.start()
    assert first_piece.wait(30)
    others = [threading.Thread(target=visit, args=(i,)) for i in (3, 6)]
    for t in others:
        t.start()
    for t in [a, *others]:
        t.join(120)
    assert batcher.joined == 2 and batcher.batch_sizes == [3]    # one decode, three rows at once
    for i in (0, 3, 6):
        assert out[i][0] == "".join(stream_text(loaded.model, loaded.tokenizer, TEXTS[i], 512, **gen)), i
    assert firsts[3] < out[0][1] and firsts[6] < out[0][1]    # their text came while A's decode still ran
