"""The model's confidence in its own output: teacher-forced token probabilities equal the ones greedy decoding
saw, characters split over byte pieces arrive whole, and the panel's handler on a tab's record."""
import pytest
import torch

from app.assets import load_assets
from app.attention import AttentionInput
from app.confidence import LOW, increments, render_html, token_confidence
from app.context import AppContext
from app.errors import UserError
from app.models import ModelCache, ModelRequest
from app.settings import Settings
from app.tabs.common import run_record
from app.tabs.confidence_panel import show_confidence
from app.tasklist import TASKS
from app.tasks import Decoding
from model.tiny import build_demo_checkpoints

ASSETS = load_assets()
SOURCE = "Scientists in Kenya have developed a low-cost solar dryer for mangoes."


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_checkpoints(tmp_path_factory.mktemp("demo"), ASSETS.example_texts())


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


def test_probabilities_are_those_of_decoding_one_token_at_a_time(demo, cache):
    """One teacher-forced pass gives each token the probability a decoder reading its prefix gives it."""
    loaded = cache.get(ModelRequest(str(demo["generation"]), "generation"))
    tok, model = loaded.tokenizer, loaded.model
    text = tok.decode(model.generate(**tok(SOURCE, return_tensors="pt"), max_new_tokens=12)[0],
                      skip_special_tokens=True)
    conf = token_confidence(loaded, AttentionInput(SOURCE, target=text))
    target = tok.encode(text)
    assert [t.token for t in conf.tokens] == tok.convert_ids_to_tokens(target) and target[-1] == tok.eos_token_id
    ids = tok(SOURCE, return_tensors="pt").input_ids
    with torch.no_grad():
        steps = torch.stack([model(input_ids=ids, decoder_input_ids=torch.tensor([[0, *target[:i]]])).logits[0, -1]
                             for i in range(len(target))]).float()
    seen = torch.softmax(steps, -1)
    expected = seen[torch.arange(len(target)), torch.tensor(target)]
    assert [t.probability for t in conf.tokens] == pytest.approx(expected.tolist(), abs=1e-5)
    entropy = -(seen * seen.clamp_min(1e-30).log()).sum(-1)
    assert [t.entropy for t in conf.tokens] == pytest.approx(entropy.tolist(), abs=1e-4)
    assert "".join(t.text for t in conf.tokens) == text
    assert conf.low == sum(t.probability < LOW for t in conf.tokens)
    assert f"{len(conf.tokens)} output tokens" in conf.summary()


def test_a_character_of_byte_pieces_arrives_with_its_last_byte(demo, cache):
    tok = cache.get(ModelRequest(str(demo["generation"]), "generation")).tokenizer
    ids = tok.encode("ok 🦜", add_special_tokens=False)
    assert len(ids) >= 5                                       # the parrot is four byte pieces in this vocabulary
    pieces = increments(tok, ids)
    assert "".join(pieces) == tok.decode(ids) and pieces[-1].endswith("🦜") and "" in pieces
    assert all("\ufffd" not in p for p in pieces)


def test_shading_escapes_the_text_and_shows_the_numbers():
    from app.confidence import Confidence, TokenConfidence

    conf = Confidence([TokenConfidence("<b>", "▁<b>", 0.9, 0.5), TokenConfidence(" x", "▁x", 0.1, 3.0)])
    page = render_html(conf)
    assert "&lt;b&gt;" in page and "<b>" not in page.replace('class="conf-token"', "")
    assert "p=0.900, entropy 0.50 nats" in page and "rgba(234, 88, 12, 0.75)" in page   # below LOW: darkest


def test_only_generated_text_has_a_confidence(demo, cache):
    loaded = cache.get(ModelRequest(str(demo["classification"]), "classification"))
    with pytest.raises(UserError, match="Confidence is shown for generated text"):
        token_confidence(loaded, AttentionInput("text", target="positive"))
    gen = cache.get(ModelRequest(str(demo["generation"]), "generation"))
    with pytest.raises(UserError, match="Confidence is shown for generated text"):
        token_confidence(gen, AttentionInput("text", target="  "))


def test_the_panel_reads_a_tab_record(demo, tmp_path):
    ctx = AppContext.create(Settings(), ASSETS.with_demo_models(demo), demo=True)
    loaded = ctx.load("summarization", "demo/generation", "auto", "auto", "none")
    inputs = {"text": SOURCE}
    result = TASKS["summarization"].run(loaded, inputs, Decoding(max_new_tokens=8))
    record = run_record(TASKS["summarization"], loaded, inputs, result, result.text, result.settings)
    shaded, line = show_confidence(ctx, record)
    assert 'class="conf-token"' in shaded and "mean probability" in line
    with pytest.raises(UserError, match="Run the task first"):
        show_confidence(ctx, None)


def test_metricx_qe_joins_the_line_when_the_deployment_has_one(demo, tmp_path):
    """With MT5_STUDIO_METRICX set, the panel adds MetricX's reference-free score of the result."""
    import dataclasses

    from app.annotation.api import input_as_text
    from app.scoring import MetricXService
    from metricx_util import tiny_metricx
    from model import MT5Tokenizer
    from model.metricx import MT5ForRegression, score

    mx, tok = tiny_metricx(tmp_path, [SOURCE] * 20, 400)
    plain = AppContext.create(Settings(), ASSETS.with_demo_models(demo), demo=True)
    ctx = dataclasses.replace(plain, settings=dataclasses.replace(plain.settings, metricx=str(mx)),
                              metricx=MetricXService(str(mx), str(tok), "none"))
    loaded = ctx.load("summarization", "demo/generation", "auto", "auto", "none")
    inputs = {"text": SOURCE}
    result = TASKS["summarization"].run(loaded, inputs, Decoding(max_new_tokens=8))
    record = run_record(TASKS["summarization"], loaded, inputs, result, result.text, result.settings)
    _, line = show_confidence(ctx, record)
    expected = score(MT5ForRegression.from_pretrained(mx), MT5Tokenizer.from_pretrained(tok),
                     [{"source": input_as_text(inputs), "hypothesis": result.text}], qe=True).scores[0]
    assert f"MetricX QE {expected:.2f} (0 best, 25 worst" in line
    assert "MetricX" not in show_confidence(plain, record)[1]
