"""Rank classification (model.ranking): summed choice log-probabilities equal transformers 4.57's teacher-forced
ones on random tiny mT5 and UMT5 checkpoints; the prompt is encoded once for all choices."""
import json
import re

import pytest
import torch

import model
from model.ranking import rank_choices
from model.tiny import tiny_model, train_sentencepiece, write_checkpoint, write_mt5_style, write_umt5_style
from refutil import run_reference

PROMPTS = ["I loved this film, the acting was wonderful.\nIs this review positive or negative?",
           "Le service était lent.\nWhat is the sentiment of this text? Options: positive, negative",
           "短い"]
CHOICES = ["positive", "negative", "it is hard to say, really", "no"]   # 1 to several tokens each
ATOL = 1e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random tiny text-to-text checkpoint of each family, saved where both sides load it."""
    root = tmp_path_factory.mktemp("rank")
    proto = train_sentencepiece(PROMPTS + CHOICES + ["hello world"] * 3, vocab_size=400, hard_vocab_limit=False)
    toks = {"mt5": write_mt5_style(root / "tok-mt5", proto), "umt5": write_umt5_style(root / "tok-umt5", proto)}
    sizes = {"mt5": len(proto.pieces) + 100, "umt5": len(proto.pieces) + 300}
    out = {}
    for seed, family in enumerate(("mt5", "umt5")):
        m = tiny_model(family, "generation", sizes[family], seed)
        with torch.no_grad():   # random init gives ~-25 nats a token, trained models a few: sums of ~500 would
            m.lm_head.weight *= 0.1   # sit at fp32's resolution (6e-5) and 1e-5 would test nothing
        out[family] = write_checkpoint(root / family, m, toks[family])
    return out


def load(folder):
    return model.load_model(folder).eval(), model.MT5Tokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def reference(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("rank-ref")
    cases = []
    for family, folder in checkpoints.items():
        _, tok = load(folder)
        cases.append(dict(name=family, dir=str(folder), family=family,
                          prompts=[tok.encode(p, add_special_tokens=False) for p in PROMPTS],
                          choices=[tok.encode(c) for c in CHOICES]))
    jobs, out = root / "jobs.json", root / "out.json"
    jobs.write_text(json.dumps({"cases": cases}))
    run_reference("ref_rank.py", jobs, out)
    return json.loads(out.read_text())


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_summed_log_probs_equal_transformers(checkpoints, reference, family):
    m, tok = load(checkpoints[family])
    expected = torch.tensor(reference[family]["sums"], dtype=torch.float32)
    counts = torch.tensor(reference[family]["counts"], dtype=torch.float32)
    assert len(set(counts.tolist())) >= 3   # the choices really differ in token length
    scores = rank_choices(m, tok, PROMPTS, CHOICES)
    assert scores.shape == (len(PROMPTS), len(CHOICES)) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, atol=ATOL, rtol=0)
    normalized = rank_choices(m, tok, PROMPTS, CHOICES, normalize=True)
    torch.testing.assert_close(normalized, expected / counts, atol=ATOL, rtol=0)


def test_prompt_is_encoded_once_for_all_choices(checkpoints):
    m, tok = load(checkpoints["mt5"])
    calls = {"encoder": 0, "decoder": 0}
    hooks = [getattr(m, name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
             for name in calls]
    try:
        rank_choices(m, tok, PROMPTS[:1], [f"label {i}" for i in range(12)])
        assert calls == {"encoder": 1, "decoder": 1}
        rank_choices(m, tok, PROMPTS, CHOICES)   # a batch of prompts: still one pass each
        assert calls == {"encoder": 2, "decoder": 2}
    finally:
        for h in hooks:
            h.remove()


def test_scores_do_not_depend_on_the_batch(checkpoints):
    """Padding (of prompts in the encoder, of choices in the decoder) changes nothing."""
    m, tok = load(checkpoints["umt5"])
    together = rank_choices(m, tok, PROMPTS, CHOICES)
    for i, prompt in enumerate(PROMPTS):
        for j, choice in enumerate(CHOICES):
            alone = rank_choices(m, tok, prompt, [choice])
            torch.testing.assert_close(alone[0, 0], together[i, j], atol=ATOL, rtol=0)


def test_bad_arguments(checkpoints):
    m, tok = load(checkpoints["mt5"])
    with pytest.raises(ValueError, match="at least one prompt and one choice"):
        rank_choices(m, tok, PROMPTS, [])
    with pytest.raises(ValueError, match="has no tokens"):
        rank_choices(m, tok, "", CHOICES)


# --- the app: prompted classification on the demo checkpoints ---------------------------------------------------
from app import ranking, tasks  # noqa: E402
from app.assets import load_assets  # noqa: E402
from app.context import AppContext  # noqa: E402
from app.errors import UserError  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.tabs.classify import preset_fields, status_line  # noqa: E402
from app.tasklist import TASKS  # noqa: E402
from model.tiny import DEMO_CLASS_LABELS, build_demo_checkpoints  # noqa: E402

ASSETS = load_assets()
SENTIMENT = ranking.preset_named("sentiment")
NLI = ranking.preset_named("nli")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """The app's context in demo mode: the registry's defaults are the demo checkpoints."""
    paths = build_demo_checkpoints(tmp_path_factory.mktemp("demo"), ASSETS.example_texts())
    return AppContext.create(Settings(offline=True), ASSETS.with_demo_models(paths), demo=True)


def test_the_checkpoint_decides_how_it_is_scored(ctx):
    assert ctx.assets.models["classification"].default == "demo/generation"
    assert ctx.head_for("classification", "demo/generation") == "generation"
    assert ctx.head_for("classification", "demo/classification") == "classification"
    assert ctx.head_for("classification", "nobody/not-here") == "generation"   # the load will say what is wrong
    assert ctx.load("classification", "").head == "generation"
    assert ctx.load("classification", "demo/classification").head == "classification"


def test_prompted_classification_scores_the_labels_as_typed(ctx):
    loaded = ctx.load("classification", "")
    text = ASSETS.examples["classification"][0]["text"]
    result = ranking.classify_checkpoint(loaded, {"text": text}, " Good news ,Bad News, meh ", SENTIMENT.template,
                                         preset=SENTIMENT)
    assert isinstance(result, ranking.RankedClassification) and result.method == "rank classification"
    assert set(result.probabilities) == {"Good news", "Bad News", "meh"}
    assert abs(sum(result.probabilities.values()) - 1) < 1e-6
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    assert list(result.probabilities.values()) == sorted(result.probabilities.values(), reverse=True)
    assert result.prompt == f"{text}\nWhat is the sentiment of this text? Options: Good news, Bad News, meh"
    expected = rank_choices(loaded.model, loaded.tokenizer, result.prompt, ["Good news", "Bad News", "meh"])[0]
    assert result.scores["meh"] == pytest.approx(float(expected[2]), abs=1e-5)
    message, kind = status_line(result, loaded)
    assert "rank classification over 3 labels with demo/generation" in message and kind == "info"


def test_one_label_per_line_may_hold_commas_and_normalising_changes_the_scores(ctx):
    loaded = ctx.load("classification", "")
    labels = "science, technology\nsports\nthe arts, culture and entertainment"
    plain = ranking.classify_prompted(loaded, {"text": "A new telescope"}, labels, "{text}\nTopic? {choices}")
    per_token = ranking.classify_prompted(loaded, {"text": "A new telescope"}, labels, "{text}\nTopic? {choices}",
                                          normalize=True)
    assert set(plain.probabilities) == {"science, technology", "sports", "the arts, culture and entertainment"}
    assert per_token.normalized and per_token.scores != plain.scores
    assert "divided by its token count" in status_line(per_token, loaded)[0]


def test_nli_reads_premise_and_hypothesis(ctx):
    loaded = ctx.load("classification", "")
    result = ranking.classify_checkpoint(loaded, {"premise": "A man is sleeping.", "hypothesis": "He is awake."},
                                         "yes, maybe, no", NLI.template, preset=NLI)
    assert result.prompt == ('A man is sleeping.\nQuestion: Does this imply that "He is awake."? '
                             'Options: yes, maybe, no')
    assert set(result.probabilities) == {"yes", "maybe", "no"}
    assert preset_fields("nli")["pair_visible"] and not preset_fields("nli")["text_visible"]


def test_a_long_text_is_cut_but_the_question_and_choices_stay(ctx):
    loaded = ctx.load("classification", "")
    result = ranking.classify_prompted(loaded, {"text": "word " * 5000}, "yes, no", "{text}\nAnswer: {choices}")
    assert result.truncated and result.prompt.endswith("\nAnswer: yes, no")
    assert len(loaded.tokenizer.encode(result.prompt, add_special_tokens=False)) <= tasks.MAX_INPUT_TOKENS


def test_the_head_path_is_unchanged(ctx):
    loaded = ctx.load("classification", "demo/classification")
    text = ASSETS.examples["classification"][3]["text"]
    result = ranking.classify_checkpoint(loaded, {"text": text}, "ignored, labels", "ignored {text}",
                                         preset=SENTIMENT)
    direct = tasks.classify(loaded, text)
    assert result == direct and set(result.probabilities) == set(DEMO_CLASS_LABELS)
    assert ranking.method_of(result) == "classification head"
    assert "classification head of demo/classification" in status_line(result, loaded)[0]
    assert TASKS["classification"].run(loaded, {"text": text}, tasks.Decoding()) == direct
    with pytest.raises(UserError, match="classification head, which reads one text"):
        ranking.classify_checkpoint(loaded, {"premise": "a", "hypothesis": "b"}, "yes, no", NLI.template,
                                    preset=NLI)


def test_the_task_table_runs_the_default_preset_on_a_text_to_text_checkpoint(ctx):
    result = TASKS["classification"].run(ctx.load("classification", ""), {"text": "Great!"}, tasks.Decoding())
    assert list(SENTIMENT.labels) == ["positive", "neutral", "negative"]
    assert set(result.probabilities) == set(SENTIMENT.labels) == set(DEMO_CLASS_LABELS)
    attention = TASKS["classification"].attention({"text": "Great!"}, result)
    assert attention.source == result.prompt and attention.target == result.label


@pytest.mark.parametrize("labels,template,inputs,message", [
    ("", SENTIMENT.template, {"text": "Fine."}, "No labels given"),
    (" , ,\n", SENTIMENT.template, {"text": "Fine."}, "No labels given"),
    ("positive", SENTIMENT.template, {"text": "Fine."}, "Only one label ('positive')"),
    (", ".join(f"label {i}" for i in range(101)), SENTIMENT.template, {"text": "Fine."},
     "101 labels given; at most 100"),
    (", ".join(f"label {i}" for i in range(200)), SENTIMENT.template, {"text": "Fine."},
     "200 labels given; at most 100"),
    ("yes, no, yes", SENTIMENT.template, {"text": "Fine."}, "The label 'yes' is given more than once"),
    ("x" * 201 + ", no", SENTIMENT.template, {"text": "Fine."}, "a label may have at most 200"),
    ("yes, no", "", {"text": "Fine."}, "The prompt template is empty"),
    ("yes, no", "   ", {"text": "Fine."}, "The prompt template is empty"),
    ("yes, no", "Is it good? {choices}", {"text": "Fine."}, "The prompt template has no {text} placeholder"),
    ("yes, no", "{text} {hypothesis}?", {"text": "Fine."}, "uses {hypothesis}, which this preset has no input"),
    ("yes, no", "", {"text": ""}, "The text is empty"),
])
def test_bad_input_gets_a_clear_message(ctx, labels, template, inputs, message):
    loaded = ctx.load("classification", "")
    with pytest.raises(UserError, match=re.escape(message)):
        ranking.classify_checkpoint(loaded, inputs, labels, template, preset=SENTIMENT)


@pytest.mark.parametrize("template,inputs,message", [
    ("{premise} {choices}", {"premise": "p", "hypothesis": "h"}, "has no {hypothesis} placeholder"),
    ("{hypothesis} {choices}", {"premise": "p", "hypothesis": "h"}, "has no {premise} placeholder"),
    ("{text} {choices}", {"premise": "p", "hypothesis": "h"}, "has no {premise} placeholder"),
    (NLI.template, {"premise": "p", "hypothesis": " "}, "The hypothesis is empty"),
])
def test_bad_nli_input_gets_a_clear_message(ctx, template, inputs, message):
    loaded = ctx.load("classification", "")
    with pytest.raises(UserError, match=re.escape(message)):
        ranking.classify_checkpoint(loaded, inputs, "yes, maybe, no", template, preset=NLI)


def test_a_text_with_braces_is_not_read_as_a_template():
    values = {"text": "a {hypothesis} {choices} b", "choices": "x, y"}
    assert ranking.render("{text} / {choices}", values) == "a {hypothesis} {choices} b / x, y"
