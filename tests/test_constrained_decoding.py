"""prefix_allowed_tokens_fn in generate(): token-identical to transformers 4.57 (greedy, beams, with other
processors), and `model.constraints.context_span_constraint`: whatever the model, greedy, beam and sampled
outputs are runs of the context's tokens (a property test over random contexts, fixed seeds)."""
import json
import random

import pytest
import torch

from model import MT5Config, MT5ForConditionalGeneration, UMT5Config, UMT5ForConditionalGeneration
from model.constraints import SpanIndex, context_span_constraint, is_span
from model.fast_head import lm_head_screen
from refutil import run_reference

VOCAB, EOS = 400, 1
TINY = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=3)


def tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg_cls, cls = (UMT5Config, UMT5ForConditionalGeneration) if family == "umt5" else (
        MT5Config, MT5ForConditionalGeneration)
    return cls(cfg_cls(**TINY)).eval()


def random_inputs(rng: random.Random, rows: int):
    """(input_ids, attention_mask) of `rows` random texts of different lengths, eos-terminated, right-padded."""
    lengths = [rng.randint(3, 12) for _ in range(rows)]
    ids = torch.zeros(rows, max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.tensor([rng.randint(3, VOCAB - 1) for _ in range(n - 1)] + [EOS])
        mask[i, :n] = 1
    return ids, mask


def table_spec(rng: random.Random) -> dict:
    """A constraint both sides can run: the allowed next tokens depend on the last token (and on batch_id)."""
    table = {str(t): sorted(rng.sample(range(2, VOCAB), rng.randint(1, 6)) + ([EOS] if rng.random() < 0.3 else []))
             for t in range(VOCAB) if rng.random() < 0.7}
    return {"kind": "table", "table": table, "default": sorted(rng.sample(range(2, VOCAB), 40)) + [EOS],
            "per_batch": [7, 11, 13]}


def table_fn(spec):
    return lambda batch_id, ids: spec["table"].get(str(int(ids[-1])), spec["default"]) + [
        spec["per_batch"][batch_id % len(spec["per_batch"])]]


SETTINGS = {
    "greedy": dict(max_new_tokens=12),
    "greedy_ngram": dict(max_new_tokens=12, no_repeat_ngram_size=2),
    "greedy_repetition": dict(max_new_tokens=10, repetition_penalty=1.5),
    "greedy_ret2_bad": dict(max_new_tokens=10, bad_words_ids=[[7]]),
    "beam3": dict(max_new_tokens=10, num_beams=3),
    "beam4_ret2_lp": dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, length_penalty=0.6),
    "beam2_min": dict(max_new_tokens=8, num_beams=2, min_new_tokens=3),
}


# A span constraint with a minimum length is unsatisfiable where the run reaches the context's end early (only
# eos allowed, eos banned): every score is -inf and which token wins is an accident of each side's top-k.
CASES = [(setting, kind) for setting in SETTINGS for kind in ("table", "span")
         if not (kind == "span" and "min_new_tokens" in SETTINGS[setting])]


def trim(rows):
    """Up to and including the first eos after the start token (transformers pads finished rows differently)."""
    return [r[: r.index(EOS, 1) + 1] if EOS in r[1:] else r for r in map(list, rows)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-ref")
    rng = random.Random(7)
    cases, ours = [], {}
    for family in ("mt5", "umt5"):
        m = tiny(family, seed=3)
        m.save_pretrained(root / family)
        ids, mask = random_inputs(rng, 3)
        for name, kind in CASES:
            kwargs = SETTINGS[name]
            spec = table_spec(rng) if kind == "table" else {
                "kind": "span", "eos": EOS,   # contexts with repeated tokens, one per input
                "context": [[rng.choice([5, 6, 8, 9, 5, 10 + i]) for _ in range(rng.randint(1, 15))]
                            for i in range(3)]}
            case = f"{family}-{name}-{kind}"
            cases.append(dict(name=case, dir=str(root / family), family=family, input_ids=ids.tolist(),
                              attention_mask=mask.tolist(), kwargs=kwargs, prefix=spec))
            ours[case] = (m, ids, mask, kwargs, spec)
    jobs, out = root / "jobs.json", root / "out.json"
    jobs.write_text(json.dumps({"cases": cases}))
    run_reference("ref_prefix.py", jobs, out)
    return ours, json.loads(out.read_text())


def our_fn(spec):
    if spec["kind"] == "table":
        return table_fn(spec)
    fns = [context_span_constraint(c, spec["eos"]) for c in spec["context"]]
    return lambda batch_id, ids: fns[batch_id](batch_id, ids)


@pytest.mark.reference
@pytest.mark.parametrize("family", ["mt5", "umt5"])
@pytest.mark.parametrize("setting,kind", CASES)
def test_prefix_fn_tokens_equal_transformers(reference, family, setting, kind):
    ours, ref = reference
    m, ids, mask, kwargs, spec = ours[f"{family}-{setting}-{kind}"]
    # mt5 (untied head) decodes greedy through the int8 screen, which must apply the mask too; umt5 here is tied
    assert (lm_head_screen(m) is not None) == (not m.config.tie_word_embeddings)
    out = m.generate(ids, mask, prefix_allowed_tokens_fn=our_fn(spec), return_dict_in_generate=True, output_scores=True,
                     **kwargs)
    expected = ref[f"{family}-{setting}-{kind}"]
    assert trim(out.sequences.tolist()) == trim(expected["sequences"])
    if "sequences_scores" in expected:
        torch.testing.assert_close(out.sequences_scores, torch.tensor(expected["sequences_scores"]), atol=1e-5,
                                   rtol=0)


def test_no_prefix_fn_leaves_decoding_unchanged():
    m = tiny("mt5")
    ids, mask = random_inputs(random.Random(1), 2)
    everything = lambda batch_id, sent: list(range(VOCAB))
    for kwargs in (dict(max_new_tokens=8), dict(max_new_tokens=8, num_beams=3)):
        assert torch.equal(m.generate(ids, mask, **kwargs),
                           m.generate(ids, mask, prefix_allowed_tokens_fn=everything, **kwargs))


def test_an_empty_allowed_list_is_an_error():
    m = tiny("mt5")
    ids, mask = random_inputs(random.Random(2), 1)
    with pytest.raises(ValueError, match="empty list for batch ID 0"):
        m.generate(ids, mask, max_new_tokens=3, prefix_allowed_tokens_fn=lambda b, s: [])


def generated_run(row: list[int]) -> list[int]:
    """The tokens after the start token, up to (without) eos and padding."""
    row = row[1:]
    return row[: row.index(EOS)] if EOS in row else row


def test_span_index_matches_brute_force():
    rng = random.Random(3)
    for _ in range(200):
        ids = [rng.randint(2, 6) for _ in range(rng.randint(1, 25))]
        index = SpanIndex(ids)
        for _ in range(10):
            start = rng.randrange(len(ids))
            run = tuple(ids[start: start + rng.randint(0, 5)]) if rng.random() < 0.8 else (rng.randint(2, 6),)
            brute = sorted({ids[i + len(run)] for i in range(len(ids) - len(run))
                            if tuple(ids[i: i + len(run)]) == run})
            assert index.next_tokens(run) == brute


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_constrained_outputs_are_always_spans_of_the_context(family):
    """~200 random contexts (small alphabets: many repeated tokens), random models and inputs: every greedy,
    beam and sampled output, start and eos removed, is a contiguous run of the context; one that ended with eos
    holds at least one token."""
    rng = random.Random(11 if family == "mt5" else 12)
    models = [tiny(family, seed) for seed in range(3)]
    for case in range(100):
        m = models[case % len(models)]
        alphabet = rng.sample(range(2, VOCAB), rng.choice([2, 3, 5, 20, 100]))
        context = [rng.choice(alphabet) for _ in range(rng.randint(1, 40))]
        fn = context_span_constraint(context, EOS)
        ids, mask = random_inputs(rng, 2)
        runs = [
            m.generate(ids, mask, max_new_tokens=rng.randint(1, 12), prefix_allowed_tokens_fn=fn),
            m.generate(ids, mask, max_new_tokens=rng.randint(1, 12), num_beams=3, num_return_sequences=2,
                       prefix_allowed_tokens_fn=fn),
            m.generate(ids, mask, max_new_tokens=8, do_sample=True, seed=case, prefix_allowed_tokens_fn=fn),
        ]
        for seqs in runs:
            for row in seqs.tolist():
                run = generated_run(row)
                assert is_span(run, context), (context, row)
                if EOS in row[1:]:
                    assert run, row


def test_an_empty_context_is_refused():
    with pytest.raises(ValueError, match="no tokens"):
        context_span_constraint([EOS], EOS)
