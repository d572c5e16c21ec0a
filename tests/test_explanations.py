"""The page's explanations (app.explanations) on the demo checkpoints: each question's scores are model.explain's
for the chosen output token, the "why not" contrast, the panel's handlers on a tab's record, and every refusal."""
import pytest
import torch

from app.assets import load_assets
from app.attention import AttentionInput
from app.context import AppContext
from app.errors import UserError
from app.explanations import MAX_IG_STEPS, QUESTIONS, explain, output_choices, render_html
from app.settings import Settings
from app.tabs.common import run_record
from app.tabs.explain_panel import explain_record, words_of
from app.tasklist import TASKS
from app.tasks import Decoding
from model import explain as mx
from model.tiny import build_demo_checkpoints

ASSETS = load_assets()
SOURCE = "Die Ärztin hat mir geraten, jeden Tag spazieren zu gehen."


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    demo = build_demo_checkpoints(tmp_path_factory.mktemp("demo"), ASSETS.example_texts())
    return AppContext.create(Settings(), ASSETS.with_demo_models(demo), demo=True)


@pytest.fixture(scope="module")
def record(ctx):
    loaded = ctx.load("summarization", "demo/generation", "auto", "auto", "none")
    inputs = {"text": SOURCE}
    result = TASKS["summarization"].run(loaded, inputs, Decoding(max_new_tokens=8))
    return run_record(TASKS["summarization"], loaded, inputs, result, result.text, result.settings)


def test_each_question_gives_model_explains_scores_for_the_word(ctx, record):
    loaded = ctx.load("summarization", "demo/generation", "auto", "auto", "none")
    what = AttentionInput(**record["attention"])
    source = torch.tensor(loaded.tokenizer.encode(what.source))
    target = torch.tensor(loaded.tokenizer.encode(what.target))
    for method in QUESTIONS.values():
        e = explain(loaded, what, method, 2, steps=4)
        if method == "integrated_gradients":
            ref = mx.integrated_gradients(loaded.model, source, None, target, positions=[2], steps=4,
                                          baseline_token=loaded.tokenizer.unk_token_id)
            row = 0
        elif method in ("gradient_x_input", "saliency"):
            ref, row = getattr(mx, method)(loaded.model, source, None, target, positions=[2]), 0
        else:
            ref, row = getattr(mx, method)(loaded.model, source, None, target), 2
        assert e.source == pytest.approx(ref.source[row].tolist(), abs=1e-6), method
        assert len(e.source) == len(e.source_pieces) == len(source) and e.position == 2
        assert "".join(e.target_pieces) == what.target
    alti = explain(loaded, what, "alti_plus", 0)
    assert len(alti.source_share) == len(target) and all(0 <= s <= 1 + 1e-5 for s in alti.source_share)
    page = render_html(alti)
    assert "Share from the source" in page and 'class="expl-token"' in page and "<mark" in page


def test_why_not_gives_the_difference_and_its_attribution(ctx, record):
    loaded = ctx.load("summarization", "demo/generation", "auto", "auto", "none")
    e = explain(loaded, AttentionInput(**record["attention"]), "contrastive", 1, "Ärztin")
    c = e.contrast
    assert c["difference"] == pytest.approx(c["produced_logprob"] - c["alternative_logprob"])
    assert c["alternative"].startswith("Ä") and any(s != 0 for s in e.source)
    assert "log p(" in render_html(e) and "nats" in render_html(e)


@pytest.mark.parametrize("args,message", [
    (dict(method="contrastive", position=0, alternative=" "), "Type the word you expected instead"),
    (dict(method="saliency", position=99), "Output token 99 does not exist"),
    (dict(method="integrated_gradients", position=0, steps=MAX_IG_STEPS + 1), "this deployment allows 1 to 64"),
    (dict(method="attention_rollout", position=0), "Unknown explanation method"),
])
def test_refusals(ctx, record, args, message):
    loaded = ctx.load("summarization", "demo/generation", "auto", "auto", "none")
    with pytest.raises(UserError, match=message):
        explain(loaded, AttentionInput(**record["attention"]), **args)


def test_the_panel_reads_the_record_and_lists_the_words(ctx, record):
    words = words_of(ctx, record)
    loaded = ctx.load("summarization", "demo/generation", "auto", "auto", "none")
    assert words == output_choices(loaded, AttentionInput(**record["attention"]))
    assert words and words[0][1] == 0 and all(label.startswith(f"{i}: ") for label, i in words)
    shown, line = explain_record(ctx, record, next(iter(QUESTIONS)), words[1][1], "")
    assert 'class="expl-source"' in shown and "with gradient x input" in line.replace("×", "x")
    _, why = explain_record(ctx, record, next(iter(QUESTIONS)), words[1][1], "Haus")
    assert "contrastive" in why
    assert words_of(ctx, None) == []
    with pytest.raises(UserError, match="Pick the output word"):
        explain_record(ctx, record, next(iter(QUESTIONS)), None, "")
