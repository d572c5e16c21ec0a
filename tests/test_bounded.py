"""Issue 21, part 1: every request's cost is counted in tokens and checked against the deployment's budget before
the model runs. The estimate (`app.limits.working_bytes`) is held against peaks measured in child processes; the
attacks that took the demo server's memory (templates with repeated placeholders, labels of byte pieces, many long
labels) are sent to a real app through `gradio_client`, and its peak memory (VmHWM) is read before and after."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from app.errors import UserError
from app.limits import (MAX_TEMPLATE_CHARS, REQUEST_MB, Work, check_work, generation_work, request_budget,
                        working_bytes)
from app.models import Loaded, ModelRequest
from app.prompted_tagging import MAX_TYPE_TOKENS, tag_prompted
from app.ranking import MAX_LABEL_TOKENS, classify_prompted, fit_prompt
from app.tasks import Decoding
from model import MT5Config

gradio_client = pytest.importorskip("gradio_client")

import apphost  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
AppError = gradio_client.exceptions.AppError
BUDGET_MB = 128          # the test server's MT5_STUDIO_REQUEST_MB
SHAPES = {"demo": dict(d_model=64, d_ff=128, num_heads=4, d_kv=16, num_layers=2, vocab_size=932),
          "small": dict(d_model=512, d_ff=1024, num_heads=6, d_kv=64, num_layers=4, vocab_size=32000)}


# ------------------------------------------------------------------------------------------------------------
# The estimate is an upper bound of what the model really takes
# ------------------------------------------------------------------------------------------------------------
MEASURE = r'''
import json, sys
import torch
torch.set_num_threads(1)
from model import MT5Config, MT5ForConditionalGeneration
from model.ranking import rank_choices
shape, kind, rows, t, s = json.loads(sys.argv[1])
model = MT5ForConditionalGeneration(MT5Config(**shape)).eval()
class Tok:   # ids of the lengths asked for, without a vocabulary
    pad_token_id = 0
    def encode(self, text, add_special_tokens=True):
        return [5 + i % 50 for i in range(int(text))] + ([1] if add_special_tokens else [])
rss = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
# warm up with a little work first: what is built once per model (the output projection's packed copy) is not a
# request's cost, as the server builds it once
if kind == "rank":
    rank_choices(model, Tok(), "8", ["3", "4", "5", "6"])
else:
    model.generate(torch.full((1, 8), 7), torch.ones(1, 8, dtype=torch.long), num_beams=rows, max_new_tokens=2)
open("/proc/self/clear_refs", "w").write("5")   # the peak (VmHWM) starts again from here: not the warm-up's
base = rss()
if kind == "rank":
    rank_choices(model, Tok(), str(s), [str(t - 1)] * rows)
else:   # beams
    ids = torch.full((1, s), 7)
    model.generate(ids, torch.ones_like(ids), num_beams=rows, max_new_tokens=t, min_new_tokens=t)
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
print(json.dumps((peak - base) * 1024))
'''


@pytest.mark.parametrize("shape, kind, rows, t, s", [
    ("demo", "rank", 60, 400, 100),     # labels of byte pieces: attention over the label's length squared
    ("small", "rank", 100, 32, 512),    # many labels
    ("small", "beams", 8, 48, 512),     # beams over a full input
])
def test_the_estimate_bounds_the_measured_peak(shape, kind, rows, t, s):
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps([SHAPES[shape], kind, rows, t, s])], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    work = (Work("", 1, s, rows, t, teacher_forced=True, shared_source=True) if kind == "rank"
            else generation_work({"num_beams": rows, "max_new_tokens": t}, 1, s, "beams"))
    estimate = working_bytes(work, MT5Config(**SHAPES[shape]))
    assert measured <= estimate, (measured, estimate)
    assert estimate < 4 * measured + 64 * 2**20, (measured, estimate)   # a bound, not a guess off by orders


def test_the_budget_scales_with_the_model():
    work = Work("100 labels × 64 tokens", 1, 512, 100, 64, teacher_forced=True, shared_source=True)
    small = MT5Config(**SHAPES["small"])
    xl = MT5Config(d_model=2048, d_ff=5120, num_heads=32, d_kv=64, num_layers=24, vocab_size=250112)
    assert working_bytes(work, xl) > 5 * working_bytes(work, small)   # the same tokens cost more on a bigger model
    assert request_budget(300 * 2**20) == REQUEST_MB * 2**20           # the deployment's budget for a small model
    assert request_budget(14 * 2**30) == 7 * 2**30                     # half the weights for a big one
    check_work(work, small, request_budget(300 * 2**20), "use fewer labels.")
    with pytest.raises(UserError) as e:
        check_work(work, xl, request_budget(300 * 2**20), "use fewer labels.")
    message = str(e.value)
    assert "100 labels × 64 tokens (6,912 tokens through the model)" in message
    assert "one request may use at most 1,024 MB (MT5_STUDIO_REQUEST_MB): use fewer labels." in message


# ------------------------------------------------------------------------------------------------------------
# The checks, on the tiny demo model without a server
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from model.tiny import build_demo_checkpoints
    import model as mt5
    folder = tmp_path_factory.mktemp("demo-ckpt")
    path = build_demo_checkpoints(folder, ["A first text about the weather.", "Ein zweiter Text."])["generation"]
    m = mt5.load_model(path, task="generation")
    return Loaded(ModelRequest(str(path)), m, mt5.MT5Tokenizer.from_pretrained(path), "mt5", 2**20)


def test_a_label_is_limited_in_tokens_not_characters(demo):
    emoji = "😀" * 50    # 50 characters, each one four byte pieces
    assert len(demo.tokenizer.encode(emoji)) > MAX_LABEL_TOKENS
    with pytest.raises(UserError, match=f"is {len(demo.tokenizer.encode(emoji))} tokens long; a label may have at "
                                        f"most {MAX_LABEL_TOKENS} tokens: shorten it"):
        classify_prompted(demo, {"text": "Some text."}, [emoji, "b"], "{text} {choices}")


@pytest.mark.parametrize("template, match", [
    ("{text}" + "{choices}" * 60, "holds {choices} 60 times; this deployment allows it once"),
    ("{text}{text} {choices}", "holds {text} 2 times"),
    ("{text} {choices} " + "x" * MAX_TEMPLATE_CHARS, f"at most {MAX_TEMPLATE_CHARS:,} are allowed"),
])
def test_classification_templates_are_bounded(demo, template, match):
    with pytest.raises(UserError, match=match.replace("{", r"\{").replace("}", r"\}")):
        classify_prompted(demo, {"text": "Some text."}, ["a", "b"], template)


@pytest.mark.parametrize("template, match", [
    ("{type}" + "{text}" * 200, "holds {text} 200 times"),
    ("{text} {type} {type} {type} {type}", "holds {type} 4 times; this deployment allows it at most 3 times"),
])
def test_tagging_templates_are_bounded(demo, template, match):
    with pytest.raises(UserError, match=match.replace("{", r"\{").replace("}", r"\}")):
        tag_prompted(demo, "Some text.", ["person"], template, Decoding(max_new_tokens=4))


def test_an_entity_type_is_limited_in_tokens(demo):
    with pytest.raises(UserError, match=f"at most {MAX_TYPE_TOKENS}: shorten it"):
        tag_prompted(demo, "Some text.", ["😀" * 12], "{text} {type}", Decoding(max_new_tokens=4))


def test_the_prompt_is_cut_by_tokens_as_it_is_built(demo):
    tok = demo.tokenizer
    text = "The weather is fine today. " * 400
    prompt, cut = fit_prompt(tok, "{text}\nOptions: {choices}", {"text": text, "choices": "a, b"}, "text", 64)
    assert cut and prompt.endswith("\nOptions: a, b") and text.startswith(prompt.split("\nOptions")[0])
    assert len(tok.encode(prompt, add_special_tokens=False)) <= 64
    short, cut = fit_prompt(tok, "{text}\nOptions: {choices}", {"text": "Fine.", "choices": "a, b"}, "text", 64)
    assert (short, cut) == ("Fine.\nOptions: a, b", False)
    with pytest.raises(UserError, match="leaving no room for the text: use fewer or shorter labels"):
        fit_prompt(tok, "{text}\nOptions: {choices}", {"text": "Fine.", "choices": ", ".join(["weather"] * 40)},
                   "text", 64)


def test_a_request_over_the_budget_is_refused_before_the_model_runs(demo, monkeypatch):
    labels = [f"{' '.join(['qz'] * 19)} {i}" for i in range(100)]
    ran = []
    monkeypatch.setattr("app.ranking.rank_choices", lambda *a, **k: ran.append(1))
    tight = Loaded(demo.request, demo.model, demo.tokenizer, "mt5", 2**20, request_mb=32)
    with pytest.raises(UserError, match=r"100 labels × \d+ tokens .* at most 32 MB \(MT5_STUDIO_REQUEST_MB\): use "
                                        "fewer or shorter labels."):
        classify_prompted(tight, {"text": "Some text."}, labels, "{text}\nWhich one?")
    assert not ran


# ------------------------------------------------------------------------------------------------------------
# The attacks, against a real server
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounded")
    env = {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "MT5_STUDIO_DB": str(root / "annotations.db"),
           "MT5_STUDIO_REQUEST_MB": str(BUDGET_MB)}
    srv = apphost.start(root / "server.log", env=env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = gradio_client.Client(server.url, verbose=False)
    c.predict("I loved it.", api_name="/classify")       # warm: the model is loaded before memory is read
    c.predict("Marie Curie was born in Warsaw.", model="demo/generation", api_name="/tag")
    return c


def peak_mb(server) -> float:
    """The server's peak resident memory so far (VmHWM), in MB."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def refused(client, server, *args, match: str, api_name: str, **kwargs) -> str:
    before, start = peak_mb(server), time.monotonic()
    with pytest.raises(AppError) as e:
        client.predict(*args, api_name=api_name, **kwargs)
    message = str(e.value)
    assert match in message, message
    assert time.monotonic() - start < 10
    assert peak_mb(server) - before < 50, "the refused request grew the server's memory"
    return message


LONG_LABELS = "\n".join(f"label number {i} " + "with a long description " * 7 for i in range(100))


def test_repeated_placeholders_are_refused_by_the_app(client, server):
    refused(client, server, "Some text.", labels=LONG_LABELS, template="{text}" + "{choices}" * 60,
            match="holds {choices} 60 times", api_name="/classify")            # was +604 MB in 8 s
    refused(client, server, "A text about people. " * 600, model="demo/generation", entity_types="person",
            template="{type}" + "{text}" * 200, match="holds {text} 200 times", api_name="/tag")   # was +932 MB
    refused(client, server, "Some text.", labels=LONG_LABELS, template="{text}" + "{choices}" * 1000,
            match=f"at most {MAX_TEMPLATE_CHARS:,} are allowed", api_name="/classify")   # 14.7 GB: killed


def test_labels_of_byte_pieces_are_refused_by_tokens(client, server):
    labels = "\n".join("😀" * 199 + chr(0x1F600 + i) for i in range(60))   # was +1.5 GB
    refused(client, server, "Some text.", labels=labels, match=f"a label may have at most {MAX_LABEL_TOKENS} tokens",
            api_name="/classify")


def test_many_long_labels_are_refused_over_the_budget_and_fewer_are_scored(client, server):
    labels = [f"{' '.join(['qz'] * 19)} {i}" for i in range(100)]
    message = refused(client, server, "Some text.", labels="\n".join(labels), template="{text}\nWhich one?",
                      match=f"one request may use at most {BUDGET_MB} MB (MT5_STUDIO_REQUEST_MB)", api_name="/classify")
    assert "100 labels ×" in message and "use fewer or shorter labels" in message
    result = client.predict("Some text.", labels="\n".join(labels[:10]), template="{text}\nWhich one?",
                            api_name="/classify")
    assert result["method"] == "rank classification" and len(result["probabilities"]) == 10
    torch.testing.assert_close(sum(result["probabilities"].values()), 1.0)


def test_deep_json_in_spans_and_batch_records_is_a_one_line_message(tmp_path):
    from app.annotation.spans import parse_spans
    from model.batch import read_records
    with pytest.raises(ValueError, match="nested too deeply to read$"):
        parse_spans("[" * 60000)
    out = tmp_path / "out.jsonl"
    out.write_text("[" * 60000 + "\n")
    with pytest.raises(ValueError, match="line 1 is nested too deeply to be a batch record"):
        list(read_records(out))
