"""ZeroGPU: with the `spaces` package installed (as on a ZeroGPU Space), every handler that runs a model asks
`spaces.GPU` for the GPU; off ZeroGPU the real package hands the function back, and without it nothing wraps."""
import pytest

from app import gpu
from app.assets import load_assets
from app.context import AppContext
from app.main import build_app
from app.settings import Settings
from model.tiny import build_demo_checkpoints

spaces = pytest.importorskip("spaces")


def test_off_zerogpu_the_real_decorator_hands_the_function_back(monkeypatch):
    asked = []
    real = spaces.GPU
    monkeypatch.setattr(gpu.spaces, "GPU", lambda fn: asked.append(fn) or real(fn))

    def work(x):
        return x + 1
    assert gpu.on_gpu(work) is work and asked == [work] and work(1) == 2


def test_without_the_package_nothing_wraps(monkeypatch):
    monkeypatch.setattr(gpu, "spaces", None)
    work = len
    assert gpu.on_gpu(work) is work


def test_every_model_handler_of_the_app_asks_for_the_gpu(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(gpu.spaces, "GPU", lambda fn: asked.append(fn.__name__) or fn)
    assets = load_assets()
    demo = build_demo_checkpoints(tmp_path / "demo", assets.example_texts())
    build_app(AppContext.create(Settings(), assets.with_demo_models(demo), demo=True))
    runs = {"run_summary", "run_translation", "run_fill", "run_classify", "run_tag", "run_answer"}
    assert runs <= set(asked)
    assert {"summarize", "translate", "fill_spans", "classify_text", "tag_text", "answer", "attention"} <= set(asked)
    assert "score" not in asked and "show_attention" in asked and "on_show" in asked
