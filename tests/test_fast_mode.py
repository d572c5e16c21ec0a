"""Fast decoding (model/fast_mode.py): int8 decoder and head, opt-in, labelled as inexact; what it swaps, what it
keeps, how closely it follows the fp32 model, and where it is refused."""
import pytest
import torch

from app.errors import UserError
from app.models import QUANTIZATIONS, ModelRequest, load_checkpoint
from model import MT5Config, MT5ForConditionalGeneration
from model.fast_mode import DynamicInt8Linear, fast_available, make_fast

SHAPE = dict(vocab_size=2048, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)

pytestmark = pytest.mark.skipif(not fast_available(), reason="no fbgemm engine in this PyTorch build")


def tiny(seed=0):
    torch.manual_seed(seed)
    m = MT5ForConditionalGeneration(MT5Config(**SHAPE)).eval()
    with torch.no_grad():
        m.lm_head.weight *= 3    # distributions as peaked as a trained model's, not a d_model-64 init's
    return m


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast") / "ckpt"
    tiny().save_pretrained(path)
    return path


def test_make_fast_swaps_the_decoder_and_head_and_keeps_the_encoder_and_wo():
    m = make_fast(tiny())
    assert type(m.lm_head) is DynamicInt8Linear and m.fast_decoding
    block = m.decoder.block[1]
    assert type(block.layer[0].SelfAttention.q) is DynamicInt8Linear
    assert type(block.layer[1].EncDecAttention.o) is DynamicInt8Linear
    assert type(block.layer[2].DenseReluDense.wi_0) is DynamicInt8Linear
    assert type(block.layer[2].DenseReluDense.wo) is torch.nn.Linear          # mT5's largest activations
    assert type(m.encoder.block[0].layer[0].SelfAttention.q) is torch.nn.Linear


def test_fast_decoding_follows_the_fp32_model_closely():
    exact, fast = tiny(), make_fast(tiny())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, SHAPE["vocab_size"], (4, 20), generator=g)
    with torch.no_grad():
        out = exact.generate(ids, max_new_tokens=16, num_beams=3)
        want = exact(input_ids=ids, decoder_input_ids=out).logits
        got = fast(input_ids=ids, decoder_input_ids=out).logits
    agree = (want.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree
    assert not torch.equal(want, got)                                  # it is not the exact model
    rel = ((want - got).norm() / want.norm()).item()
    assert rel < 0.05, rel
    assert fast.generate(ids, max_new_tokens=8).shape == (4, 9)           # greedy and beams both run
    assert fast.generate(ids, max_new_tokens=8, num_beams=2, no_repeat_ngram_size=2).shape[0] == 4


def test_from_pretrained_fast_decoding_and_its_refusals(checkpoint):
    m = MT5ForConditionalGeneration.from_pretrained(checkpoint, fast_decoding=True)
    assert type(m.lm_head) is DynamicInt8Linear
    for bad, what in ((dict(load_in_8bit=True), "load_in_4bit/load_in_8bit"), (dict(dtype="bfloat16"), "dtype"),
                      (dict(device_map="cpu"), "device_map")):
        with pytest.raises(ValueError, match="fast_decoding=True quantizes the decoder itself") as err:
            MT5ForConditionalGeneration.from_pretrained(checkpoint, fast_decoding=True, **bad)
        assert what in str(err.value)


def test_the_app_labels_fast_decoding_as_inexact(tmp_path):
    from app.assets import load_assets
    from model.tiny import build_demo_checkpoints

    checkpoint = build_demo_checkpoints(tmp_path, load_assets().example_texts())["generation"]
    label = QUANTIZATIONS["fast"][0]
    assert "tokens may differ" in label
    loaded = load_checkpoint(ModelRequest(str(checkpoint), quantization="fast", device="cpu"))
    assert type(loaded.model.lm_head) is DynamicInt8Linear
    assert "tokens may differ" in loaded.describe()
    with pytest.raises(UserError, match="Fast decoding quantizes the decoder from float32 weights on the CPU"):
        load_checkpoint(ModelRequest(str(checkpoint), quantization="fast", dtype="bfloat16"))
