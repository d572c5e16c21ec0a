"""Generative question answering (app.answering) in demo mode: the checkpoint decides (QA head: extractive;
text-to-text: the xP3 prompt), answers are aligned to character offsets of the context or flagged, "answer from
the passage only" always yields a span of the passage, the passage is cut (never the question) to fit, bad input
gets a clear message; /answer through the real server."""
import pytest

from app import align, answering
from app.assets import load_assets
from app.context import AppContext
from app.errors import UserError
from app.settings import Settings
from app.tasks import Decoding
from model.tiny import build_demo_checkpoints

ASSETS = load_assets()
EX = ASSETS.examples["question_answering"]
XP3 = "{context}\nQ: {question}\n\nReferring to the passage above, the correct answer to the given question is:"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    paths = build_demo_checkpoints(tmp_path_factory.mktemp("demo"), ASSETS.example_texts())
    return AppContext.create(Settings(offline=True), ASSETS.with_demo_models(paths), demo=True)


@pytest.fixture(scope="module")
def gen(ctx):
    return ctx.load("question_answering", "demo/generation")


def joined(segments):
    return "".join(text for text, _ in segments)


def test_the_default_template_is_xp3s():
    assert answering.default_template() == XP3
    assert answering.render(XP3, "Who? {x}", "A {context} B") == "A {context} B\nQ: Who? {x}\n\n" + XP3.split(
        "\n\n")[1]


def test_the_checkpoint_decides(ctx, gen):
    assert ctx.head_for("question_answering", "demo/generation") == "generation"
    assert ctx.head_for("question_answering", "demo/question-answering") == "question-answering"
    assert ASSETS.models["question_answering"].default == "bigscience/mt0-base"
    assert ASSETS.models["question_answering"].decoding == {"max_new_tokens": 32}
    head = ctx.load("question_answering", "demo/question-answering")
    row = EX[0]
    assert answering.answer_checkpoint(head, row["question"], row["context"]).method == "extractive head"
    result = answering.answer_checkpoint(gen, row["question"], row["context"])
    assert result.method == "generative" and result.prompt == answering.render(XP3, row["question"],
                                                                                 row["context"])


@pytest.mark.parametrize("row", EX, ids=[r["lang"] for r in EX])
def test_constrained_answers_are_spans_of_the_passage(gen, row):
    for decoding in (None, Decoding(max_new_tokens=6, num_beams=3)):
        result = answering.answer_generative(gen, row["question"], row["context"], decoding, constrained=True)
        a = result.answer
        assert result.method == "generative, constrained" and result.settings["constrained"] is True
        assert a.found and a.how in ("exact", "normalized", "fuzzy", "token span")
        assert 0 <= a.start < a.end <= len(row["context"])
        if a.how == "exact":
            assert row["context"][a.start:a.end] == a.text
        assert joined(result.segments) == row["context"]
        assert [t for t, label in result.segments if label == "answer"] == [row["context"][a.start:a.end]]


@pytest.mark.parametrize("row", EX, ids=[r["lang"] for r in EX])
def test_unconstrained_answers_are_aligned_or_flagged(gen, row):
    result = answering.answer_generative(gen, row["question"], row["context"], Decoding(max_new_tokens=8))
    a = result.answer
    message, _ = answering.status_line(result, "demo/generation")
    if a.found:
        assert 0 <= a.start < a.end <= len(row["context"]) and a.how in ("exact", "normalized", "fuzzy")
        assert "found in the passage at characters" in message
    else:
        assert (a.start, a.end, a.how) == (-1, -1, "") and answering.NOT_FOUND in message
        assert not any(label for _, label in result.segments)
    assert joined(result.segments) == row["context"]


def test_alignment_tiers_and_flagging(gen):
    context = "Scientists in  Kenya have developed a low-cost solar dryer."
    exact = answering.locate(context, "Kenya", gen.tokenizer, None)
    assert (exact.how, context[exact.start:exact.end]) == ("exact", "Kenya")
    loose = answering.locate(context, "in kenya", gen.tokenizer, None)
    assert loose.how == "normalized" and context[loose.start:loose.end] == "in  Kenya"
    fuzzy = answering.locate(context, "low-cost solar driers", gen.tokenizer, None)
    assert fuzzy.how == align.FUZZY and fuzzy.found and "solar dr" in context[fuzzy.start:fuzzy.end]
    missing = answering.locate(context, "on the moon, in 1969", gen.tokenizer, None)
    assert not missing.found and (missing.start, missing.end) == (-1, -1)


def test_a_long_passage_is_cut_keeping_question_and_instruction(gen):
    context = " ".join(["Scientists in Kenya have developed a low-cost solar dryer."] * 60)
    question = "Where was the solar dryer developed?"
    result = answering.answer_generative(gen, question, context, Decoding(max_new_tokens=4), constrained=True,
                                         max_input_tokens=128)
    assert result.truncated and result.prompt.endswith(XP3.split("{question}")[1])
    assert f"Q: {question}" in result.prompt
    assert len(gen.tokenizer.encode(result.prompt)) <= 128
    assert result.answer.found and result.answer.end <= len(context)
    assert "cut to fit" in answering.status_line(result, "demo/generation")[0]


@pytest.mark.parametrize("question,context,template,message", [
    ("", "Some text.", None, "The question is empty"),
    ("   ", "Some text.", None, "The question is empty"),
    ("Where?", "", None, "no context"),
    ("Where?", "In Kenya.", "Q: {question} A:", "has no {context} placeholder"),
    ("Where?", "In Kenya.", "{context} What?", "has no {question} placeholder"),
    ("Where?", "In Kenya.", "{context} {question} {question}", "holds {question} 2 times"),
    ("Where? " * 2000, "In Kenya.", None, "The question is"),
    ("Where?", "In Kenya.", "{context} {question}" + "x" * 3000, "at most 2,000 are allowed"),
])
def test_bad_input_gets_a_clear_message(gen, question, context, template, message):
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}").replace("?", r"\?")):
        answering.answer_generative(gen, question, context, template=template, constrained=True)


def test_attention_of_a_generated_answer_reads_the_prompt(ctx, gen):
    from app.tasklist import TASKS
    row = EX[0]
    result = answering.answer_checkpoint(gen, row["question"], row["context"], Decoding(max_new_tokens=4),
                                         constrained=True)
    what = TASKS["question_answering"].attention(row, result)
    assert what.source == result.prompt and what.target == result.answer.text and what.question is None
    maps = ctx.attention.get(gen, what)
    assert maps.cross is not None


def test_an_empty_template_means_xp3s(gen):
    result = answering.answer_generative(gen, "Where?", "In Kenya.", Decoding(max_new_tokens=3), template=" ")
    assert result.prompt == "In Kenya.\nQ: Where?\n\nReferring to the passage above, the correct answer to the " \
                            "given question is:"


# --- /answer through the real server ------------------------------------------------------------------------
gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def client(demo_client):
    return demo_client  # the session's demo server (tests/conftest.py)


def test_answer_endpoint_parameters(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/answer"]
    names = [p["parameter_name"] for p in api["parameters"]]
    assert names == ["question", "context", "mode", "model", "top_k", "max_new_tokens", "num_beams", "dtype",
                     "device", "quantization", "template", "constrained"]


def test_answer_endpoint_generative_and_constrained(client):
    row = EX[0]
    result = client.predict(row["question"], row["context"], model="demo/generation", max_new_tokens=6,
                            constrained=True, api_name="/answer")
    a = result["answer"]
    assert result["method"] == "generative, constrained" and a["found"] is True
    assert 0 <= a["start"] < a["end"] <= len(row["context"]) and a["how"] in ("exact", "normalized", "fuzzy",
                                                                             "token span")
    free = client.predict(row["question"], row["context"], mode="generative", max_new_tokens=6,
                          template="Passage: {context}\nQuestion: {question}\nAnswer:", api_name="/answer")
    assert free["method"] == "generative" and free["prompt"].startswith("Passage: " + row["context"])
    assert free["answer"]["found"] == (free["answer"]["start"] >= 0)
    head = client.predict(row["question"], row["context"], api_name="/answer")   # the demo default: a QA head
    assert head["method"] == "extractive head" and head["answer"]["how"] == "span"


@pytest.mark.parametrize("kwargs,message", [
    (dict(template="Q: {question}"), "The prompt template has no {context} placeholder"),
    (dict(question=""), "The question is empty"),
    (dict(mode="guess"), "Unknown mode 'guess'"),
])
def test_answer_endpoint_bad_input(client, kwargs, message):
    args = {"question": "Where?", "context": "In Kenya.", "model": "demo/generation", **kwargs}
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        client.predict(args.pop("question"), args.pop("context"), api_name="/answer", **args)
    assert message in str(e.value)
