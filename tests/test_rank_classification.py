"""Rank classification (model.ranking): summed choice log-probabilities equal transformers 4.57's teacher-forced
ones on random tiny mT5 and UMT5 checkpoints; the prompt is encoded once for all choices."""
import json

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
