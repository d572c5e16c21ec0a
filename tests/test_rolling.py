"""model.rolling: greedy decoding that rows join while it runs gives every row the tokens it gets alone, rows
leave at their own end, and only plain greedy settings may share such a decode."""
import pytest
import torch

from model import MT5Config, MT5ForConditionalGeneration, UMT5Config, UMT5ForConditionalGeneration
from model.config import GenerationConfig
from model.rolling import RollingGreedy, joinable

TINY = dict(vocab_size=512, d_model=64, d_kv=8, d_ff=48, num_layers=2, num_heads=3, eos_token_id=1,
            decoder_start_token_id=0, pad_token_id=0)


def tiny(family="mt5", seed=0):
    torch.manual_seed(seed)
    if family == "umt5":
        return UMT5ForConditionalGeneration(UMT5Config(**TINY)).eval()
    return MT5ForConditionalGeneration(MT5Config(**TINY)).eval()


def inputs(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = [5 + (7 * i) % 13 for i in range(n)]
    return [torch.randint(3, 512, (k,), generator=g) for k in lengths]


def padded(rows):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def alone(m, row, cfg):
    """The row's generated tokens when generate() decodes it by itself (start token and trailing pad cut)."""
    out = m.generate(row[None], generation_config=cfg)[0, 1:].tolist()
    return out[: out.index(1) + 1] if 1 in out else out


def run(m, rows, cfg, joins):
    """Rows join at the steps `joins` gives (step -> row numbers); the tokens each row got, in order."""
    decode, got, step = RollingGreedy(m, cfg), {i: [] for i in range(len(rows))}, 0
    pending = dict(joins)
    while pending or len(decode):
        if step in pending:
            numbers = pending.pop(step)
            decode.join(*padded([rows[i] for i in numbers]), numbers)
        for tag, token, finished in decode.step():
            got[tag].append(token)
        step += 1
    return got


@pytest.mark.parametrize("family", ["mt5", "umt5"])
def test_rows_joining_at_different_steps_get_their_solo_tokens(family):
    m = tiny(family)
    rows = inputs(6)
    cfg = m.generation_config.updated(max_new_tokens=9)
    got = run(m, rows, cfg, {0: [0, 1], 2: [2], 3: [3, 4], 7: [5]})
    for i, row in enumerate(rows):
        assert got[i] == alone(m, row, cfg), i


def test_rows_that_all_start_together_equal_generate_of_the_batch():
    m = tiny()
    rows = inputs(5, seed=3)
    cfg = m.generation_config.updated(max_new_tokens=12)
    got = run(m, rows, cfg, {0: list(range(5))})
    ids, mask = padded(rows)
    batch = m.generate(ids, attention_mask=mask, generation_config=cfg)[:, 1:].tolist()
    for i in range(5):
        expected = batch[i][: batch[i].index(1) + 1] if 1 in batch[i] else batch[i]
        assert got[i] == expected


def test_a_row_leaves_at_its_end_and_the_decode_takes_rows_after_everyone_left():
    m = tiny(seed=4)
    rows = inputs(3, seed=5)
    cfg = m.generation_config.updated(max_new_tokens=4)
    decode = RollingGreedy(m, cfg)
    decode.join(*padded(rows[:2]), ["a", "b"])
    for _ in range(2):
        decode.step()
    decode.join(*padded(rows[2:]), ["c"])
    steps = [decode.step() for _ in range(2)]
    assert [tag for tag, _, done in steps[-1] if done] == ["a", "b"]   # their 4th token: the limit
    assert len(decode) == 1 and decode.tags == ["c"]
    assert decode.cache.get_seq_length() == 2       # the positions before c joined are forgotten
    c = list(steps[0][2:] + steps[1][2:])
    while len(decode):
        c += decode.step()
    assert [t for _, t, _ in c] == alone(m, rows[2], cfg)
    decode.join(*padded(rows[:1]), ["again"])    # an emptied decode starts afresh
    tokens = []
    while len(decode):
        tokens += [t for _, t, _ in decode.step()]
    assert tokens == alone(m, rows[0], cfg)


@pytest.mark.parametrize("change", [dict(do_sample=True), dict(num_beams=2), dict(no_repeat_ngram_size=2),
                                    dict(repetition_penalty=1.2), dict(bad_words_ids=[[5]]),
                                    dict(min_new_tokens=3), dict(num_return_sequences=2, num_beams=2)])
def test_only_plain_greedy_settings_may_join(change):
    cfg = GenerationConfig(max_new_tokens=5)
    assert joinable(cfg)
    assert not joinable(cfg.updated(**change))
    with pytest.raises(ValueError, match="plain greedy"):
        RollingGreedy(tiny(), cfg.updated(**change))
