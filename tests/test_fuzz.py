"""Issue 21, part 6: fuzzed, not just listed. Hypothesis (fixed seed, bounded examples) drives every endpoint of a
real demo server with generated text, labels, templates, entity types, spans and settings, inside and at the edges
of the limits, and every importer with generated files. Each case must end in an answer or a clear refusal (a
message, never "Something went wrong", never a traceback) within a time limit, and the server's peak memory may
grow by no more than one request's budget over the whole run. Counts of what was tried and refused are printed
(`pytest -s tests/test_fuzz.py`)."""
import collections
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

gradio_client = pytest.importorskip("gradio_client")

import apphost  # noqa: E402
from app.annotation.batch import load_inputs  # noqa: E402
from app.limits import DECODING_BOUNDS, MAX_TEMPLATE_CHARS  # noqa: E402
from app.ranking import MAX_LABEL_CHARS, MAX_LABELS  # noqa: E402
from app.prompted_tagging import MAX_TYPE_CHARS, MAX_TYPES  # noqa: E402
from app.tasks import input_cap, MAX_INPUT_TOKENS  # noqa: E402

AppError = gradio_client.exceptions.AppError
handle_file = gradio_client.handle_file
BUDGET_MB = 192          # the server's MT5_STUDIO_REQUEST_MB: the most one request may add to its peak memory
CALL_S = 30              # the slowest answer allowed (8 beams x 512 new tokens on the demo model is a few seconds)
FUZZ = settings(max_examples=10, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    env = {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "MT5_STUDIO_DB": str(root / "annotations.db"),
           "MT5_STUDIO_REQUEST_MB": str(BUDGET_MB), "MT5_STUDIO_FILES_DIR": str(root / "files")}
    srv = apphost.start(root / "server.log", env=env)
    yield srv
    srv.stop()
    print("\nfuzz cases (endpoint: outcome counts):")
    for name, counter in sorted(COUNTS.items()):
        print(f"  {name}: {dict(counter)}")


@pytest.fixture(scope="module")
def client(server):
    c = gradio_client.Client(server.url, verbose=False)
    for task in ("/summarize", "/fill_spans"):   # warm: models loaded before the first peak is read
        c.predict("A text <extra_id_0> to warm up.", api_name=task)
    c.predict("I loved it.", api_name="/classify")
    c.predict("Marie Curie was born in Warsaw.", model="demo/generation", api_name="/tag")
    c.predict("Where?", "Marie Curie was born in Warsaw.", api_name="/answer")
    return c


@pytest.fixture(scope="module")
def baseline(server, client):
    return peak_mb(server)


def peak_mb(server) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def call(name: str, client, server, baseline: float, *args, **kwargs) -> object:
    """One case: an answer, or a clear refusal, in time; the server's peak within the budget of the run."""
    start = time.monotonic()
    try:
        out = client.predict(*args, api_name=f"/{name}", **kwargs)
        COUNTS[name]["answered"] += 1
    except AppError as e:
        message = str(e)
        assert message.strip() and "Something went wrong" not in message and "Traceback" not in message, message
        COUNTS[name]["refused"] += 1
        out = None
    took = time.monotonic() - start
    assert took < CALL_S, f"/{name} took {took:.1f} s"
    assert peak_mb(server) - baseline < BUDGET_MB + 64, f"/{name} grew the server's peak memory past the budget"
    return out


# ------------------------------------------------------------------------------------------------------------
# Strategies: ordinary values, and values at and just past each limit
# ------------------------------------------------------------------------------------------------------------
ALPHABET = st.sampled_from(list("abc xyz.,;\n") + ["é", "ß", "ж", "中", "文", "ا", "ש", "😀", "{", "}", "<", ">",
                                                      "{text}", "{choices}", "{type}", "<extra_id_0>", "\x00", "\t"])
WORDS = st.lists(ALPHABET, max_size=60).map("".join)
CAP = input_cap(MAX_INPUT_TOKENS)


def long_text(min_size: int = 0) -> st.SearchStrategy[str]:
    """Short texts, and texts up to past the characters any input is cut to (a piece repeated)."""
    repeated = st.builds(lambda piece, n: (piece or "x") * n, WORDS, st.integers(1, CAP // 4 + 200))
    return st.one_of(WORDS, repeated).filter(lambda t: len(t) >= min_size)


def setting(name: str) -> st.SearchStrategy:
    b = DECODING_BOUNDS[name]
    edge = [b.low, b.high, b.low - b.step, b.high + b.step]
    values = st.sampled_from([int(v) if b.step == 1 else v for v in edge])
    inside = st.integers(int(b.low), int(b.high)) if b.step == 1 else st.floats(b.low, b.high)
    return st.one_of(st.none(), st.none(), inside, values)   # mostly the checkpoint's own, or in range


def decoding(*names: str) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({n: setting(n) for n in names})


def items(limit: int, chars: int) -> st.SearchStrategy[list[str]]:
    """Lists of up to past `limit` items of up to past `chars` characters (labels, entity types)."""
    item = st.one_of(WORDS, st.builds(lambda c, n: c * n, ALPHABET, st.integers(1, chars + 10)))
    return st.lists(item, max_size=limit + 3)


def template(*names: str) -> st.SearchStrategy[str]:
    piece = st.one_of(WORDS, st.sampled_from([f"{{{n}}}" for n in names]))
    padded = st.builds(lambda t, n: t + "x" * n, st.lists(piece, max_size=8).map("".join),
                       st.sampled_from([0, 0, 0, MAX_TEMPLATE_CHARS - 40, MAX_TEMPLATE_CHARS + 1]))
    return st.one_of(st.just(""), padded)


# ------------------------------------------------------------------------------------------------------------
# Every task endpoint
# ------------------------------------------------------------------------------------------------------------
@FUZZ
@given(text=long_text(), gen=decoding("max_new_tokens", "num_beams", "no_repeat_ngram_size", "length_penalty",
                                      "temperature", "top_k", "top_p", "repetition_penalty", "seed"),
       do_sample=st.sampled_from([None, True, False]))
def test_summarize(client, server, baseline, text, gen, do_sample):
    call("summarize", client, server, baseline, text, do_sample=do_sample, **gen)


@FUZZ
@given(text=long_text(), gen=decoding("max_new_tokens", "num_beams", "temperature", "top_k", "top_p", "seed"),
       model=st.sampled_from(["", "demo/span-filling-umt5"]))
def test_fill_spans(client, server, baseline, text, gen, model):
    call("fill_spans", client, server, baseline, text + " <extra_id_0>." if len(text) % 3 else text, model=model,
         **gen)


@FUZZ
@given(text=long_text(), labels=items(MAX_LABELS, MAX_LABEL_CHARS), sep=st.sampled_from([", ", "\n"]),
       template=template("text", "choices", "premise", "hypothesis"),
       preset=st.sampled_from(["", "topic", "nli"]), hypothesis=long_text(), normalize=st.booleans())
def test_classify(client, server, baseline, text, labels, sep, template, preset, hypothesis, normalize):
    call("classify", client, server, baseline, text, labels=sep.join(labels), template=template, preset=preset,
         hypothesis=hypothesis, normalize=normalize)


@FUZZ
@given(text=long_text(), types=items(MAX_TYPES, MAX_TYPE_CHARS), template=template("text", "type"),
       model=st.sampled_from(["demo/generation", ""]))
def test_tag(client, server, baseline, text, types, template, model):
    call("tag", client, server, baseline, text, model=model, entity_types=", ".join(types), template=template)


@FUZZ
@given(question=long_text(), context=long_text(), mode=st.sampled_from(["auto", "extractive", "generative"]),
       template=template("context", "question"), top_k=st.integers(-1, 25), constrained=st.booleans(),
       gen=decoding("max_new_tokens", "num_beams"))
def test_answer(client, server, baseline, question, context, mode, template, top_k, constrained, gen):
    model = "demo/generation" if mode == "generative" else ""
    call("answer", client, server, baseline, question, context, mode=mode, model=model, template=template,
         top_k=top_k, constrained=constrained, **gen)


@FUZZ
@given(text=long_text(), task=st.sampled_from(["span_filling", "classification", "tagging", "question_answering",
                                                "summarization", "nope"]),
       question=long_text(), target=long_text(), kind=st.sampled_from(["encoder", "decoder", "cross", "x"]),
       layer=st.integers(-5, 5), head=st.sampled_from(["mean", "0", "3", "99", "x"]))
def test_attention(client, server, baseline, text, task, question, target, kind, layer, head):
    call("attention", client, server, baseline, text, task=task, question=question, target=target, kind=kind,
         layer=layer, head=head)


SPAN = st.fixed_dictionaries({"start": st.integers(-2, 40), "end": st.integers(-2, 40),
                              "side": st.sampled_from(["output", "input", "A", "x"]),
                              "category": st.sampled_from(["accuracy/mistranslation", "fluency/grammar", "", "x"]),
                              "severity": st.sampled_from(["minor", "major", "critical", "x"])})


@FUZZ
@given(task=st.sampled_from(["summarization", "span_filling", "x"]), input_text=long_text(), output=long_text(),
       rating=st.sampled_from([None, 0, 1, 5, 6]), comment=long_text(), protocol=st.sampled_from(["", "esa", "mqm"]),
       spans=st.lists(SPAN, max_size=4), esa=st.sampled_from([None, -1, 0, 100, 101]),
       decoding=st.sampled_from(["", "{}", "[" * 5000, '{"num_beams": 4}', "not json"]))
def test_annotate(client, server, baseline, task, input_text, output, rating, comment, protocol, spans, esa,
                  decoding):
    call("annotate", client, server, baseline, task, "demo/generation", input_text, output, rating=rating,
         comment=comment, protocol=protocol, spans=spans, esa_score=esa, decoding=decoding, annotator="fuzz")


@FUZZ
@given(task=st.sampled_from(["summarization", "x"]), input_text=long_text(), a=long_text(), b=long_text(),
       preference=st.sampled_from(["A", "B", "tie", "both_bad", "x"]), spans=st.lists(SPAN, max_size=3))
def test_compare(client, server, baseline, task, input_text, a, b, preference, spans):
    call("compare", client, server, baseline, task, input_text, "demo/generation", a, "demo/span-filling", b,
         preference, "fuzz", protocol="esa", spans=spans)


# ------------------------------------------------------------------------------------------------------------
# Every importer, with generated files
# ------------------------------------------------------------------------------------------------------------
def export_rows(client, name: str) -> list[dict]:
    """A real export's records (after the cases above saved some), to mutate."""
    out = client.predict("jsonl", api_name=f"/{name}")
    path = out["path"] if isinstance(out, dict) else out
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**12), st.floats(allow_nan=True), WORDS,
                   st.just("[" * 60000), st.just({"nested": [1, 2]}))
SUFFIXES = st.sampled_from([".jsonl", ".csv", ".parquet", ".json", ".txt"])


@st.composite
def files(draw, rows: list[dict]) -> tuple[str, bytes]:
    """A file to import: a real export's lines with fields changed, dropped or added; raw bytes; deep JSON."""
    kind = draw(st.sampled_from(["exported", "mutated", "mutated", "bytes", "deep", "lines"]))
    suffix = draw(SUFFIXES)
    if kind == "bytes":
        return suffix, draw(st.binary(max_size=2000))
    if kind == "deep":
        return suffix, ("[" * 60000 + "\n").encode()
    if kind == "lines":
        return suffix, "\n".join(draw(st.lists(WORDS, max_size=20))).encode()
    picked = [dict(r) for r in rows[: draw(st.integers(min(1, len(rows)), len(rows)))]]
    for r in picked if kind == "mutated" else ():
        for key in draw(st.lists(st.sampled_from(sorted(r) or ["id"]), max_size=3)):
            action = draw(st.sampled_from(["set", "drop"]))
            if action == "drop":
                r.pop(key, None)
            else:
                r[key] = draw(VALUES)
    return ".jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in picked).encode()


def importer_case(name: str, client, server, baseline, tmp_path, suffix: str, data: bytes) -> None:
    path = tmp_path / f"generated{suffix}"
    path.write_bytes(data)
    call(name, client, server, baseline, handle_file(str(path)))


@pytest.mark.parametrize("endpoint, export", [("import", "export"), ("import_comparisons", "export_comparisons")])
def test_importers(client, server, baseline, tmp_path, endpoint, export):
    rows = export_rows(client, export)

    @FUZZ
    @given(case=files(rows))
    def run(case):
        importer_case(endpoint, client, server, baseline, tmp_path, *case)

    run()


@FUZZ
@given(case=files([{"text": "A text."}, {"question": "Where?", "context": "Here."}]))
def test_batch_inputs(tmp_path_factory, case):
    """The Batch tab's and the batch command's reader of input files: rows, or a ValueError of one line."""
    suffix, data = case
    path = tmp_path_factory.mktemp("inputs") / f"inputs{suffix}"
    path.write_bytes(data)
    start = time.monotonic()
    try:
        load_inputs(path, max_rows=50)
        COUNTS["batch inputs"]["read"] += 1
    except ValueError as e:
        assert str(e).strip() and "\n" not in str(e).strip(), str(e)
        COUNTS["batch inputs"]["refused"] += 1
    assert time.monotonic() - start < 5


def test_the_server_still_serves_after_the_fuzz(client, server, baseline):
    result = client.predict("A short text to summarize for the check.", max_new_tokens=4, api_name="/summarize")
    assert isinstance(result["summary"], str)
    assert peak_mb(server) - baseline < BUDGET_MB + 64
