"""`python -m app score`: per-row sentence scores equal to sacrebleu's, the corpus line with its interval, MetricX
rows equal to the model layer's scorer, resuming, and every refusal with its message."""
import json

import pytest
import sacrebleu

from app.cli import main
from metricx_util import tiny_metricx
from model import MT5Config
from model.metricx import MT5ForRegression, score
from model import MT5Tokenizer

HYPS = ["The cat sleeps on the mat.", "Rain expected north tomorrow.", "The museum opens at nine.",
        "Farmers dry mangoes for winter.", "A bridge opens next month."]
REFS = ["The cat sleeps on the warm mat.", "Rain is expected in the north tomorrow.",
        "The museum opens its doors at nine.", "Farmers dry mangoes to sell them in winter.",
        "A new bridge will open next month."]
SRCS = ["Die Katze schläft.", "Morgen Regen im Norden.", "Das Museum öffnet um neun.", "Bauern trocknen Mangos.",
        "Eine Brücke öffnet."]


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def records(path):
    return sorted((json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()),
                  key=lambda r: r["index"])


@pytest.fixture(scope="module")
def metricx(tmp_path_factory):
    return tiny_metricx(tmp_path_factory.mktemp("metricx"), HYPS + REFS + SRCS)


def test_surface_metrics_per_row_and_for_the_corpus(tmp_path, capsys):
    rows = write(tmp_path / "rows.jsonl", [{"hypothesis": h, "reference": r} for h, r in zip(HYPS, REFS)])
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--metric", "chrf,bleu", "--input", str(rows), "--output", str(out), "--no-progress"]) == 0
    got = records(out)
    assert [r["index"] for r in got] == list(range(5))
    for r, h, ref in zip(got, HYPS, REFS):
        assert r["chrf"] == pytest.approx(sacrebleu.sentence_chrf(h, [ref], word_order=2).score)
        assert r["bleu"] == pytest.approx(sacrebleu.sentence_bleu(h, [ref]).score)
    printed = capsys.readouterr().out
    corpus = sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2).score
    assert f"chrf: {corpus:.2f} [" in printed and "over 5 rows" in printed
    assert main(["score", "--metric", "chrf,bleu", "--input", str(rows), "--output", str(out), "--no-progress"]) == 0
    assert "5 done before" in capsys.readouterr().err and records(out) == got


def test_metricx_rows_equal_the_model_layers_scores(tmp_path, metricx, capsys):
    model_dir, tok = metricx
    rows = [{"source": s, "hypothesis": h, "reference": r} for s, h, r in zip(SRCS, HYPS, REFS)]
    path = write(tmp_path / "mx.jsonl", rows)
    model = MT5ForRegression.from_pretrained(model_dir)
    tokenizer = MT5Tokenizer.from_pretrained(tok)
    for qe in (False, True):
        out = tmp_path / f"mx-{qe}.jsonl"
        argv = ["score", "--metric", "metricx", "--model", str(model_dir), "--tokenizer", str(tok), "--input",
                str(path), "--output", str(out), "--batch-size", "2", "--no-progress"] + (["--qe"] if qe else [])
        assert main(argv) == 0
        expected = score(model, tokenizer, rows, qe=qe, batch_size=1).scores
        assert [r["metricx"] for r in records(out)] == pytest.approx(expected, abs=1e-5)
    assert "metricx: " in capsys.readouterr().out


def test_an_empty_hypothesis_fails_its_row_only(tmp_path, metricx, capsys):
    model_dir, tok = metricx
    rows = [{"source": "a", "hypothesis": "b", "reference": "c"}, {"source": "a", "hypothesis": " ", "reference": "c"}]
    out = tmp_path / "e.jsonl"
    assert main(["score", "--metric", "metricx", "--model", str(model_dir), "--tokenizer", str(tok), "--input",
                 str(write(tmp_path / "e-in.jsonl", rows)), "--output", str(out), "--no-progress"]) == 1
    first, second = records(out)
    assert isinstance(first["metricx"], float) and "empty hypothesis" in second["error"]


@pytest.mark.parametrize("case,message", [
    ("no reference", "chrf needs a `reference` column, which rows.jsonl lacks"),
    ("no hypothesis", "has no `hypothesis` column"),
    ("unknown metric", "unknown metric meteor: use one or more of bleu, chrf, ter, rouge, metricx"),
    ("metricx without model", "--metric metricx needs --model"),
    ("metricx without source", "metricx reads the source"),
    ("not metricx", "not a MetricX checkpoint"),
])
def test_refusals(tmp_path, metricx, capsys, case, message):
    model_dir, tok = metricx
    plain = tmp_path / "plain"
    MT5Config(vocab_size=300, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
              architectures=["MT5ForConditionalGeneration"]).save_pretrained(plain)
    rows = {"no reference": [{"hypothesis": "a"}], "no hypothesis": [{"text": "a", "reference": "b"}],
            "metricx without source": [{"hypothesis": "a", "reference": "b"}]}.get(
        case, [{"source": "s", "hypothesis": "a", "reference": "b"}])
    metric = {"unknown metric": "meteor", "no reference": "chrf", "no hypothesis": "chrf"}.get(case, "metricx")
    model = {"metricx without model": "", "not metricx": str(plain)}.get(case, str(model_dir))
    out = tmp_path / "o.jsonl"
    argv = ["score", "--metric", metric, "--input", str(write(tmp_path / "rows.jsonl", rows)), "--output", str(out),
            "--model", model, "--tokenizer", str(tok), "--no-progress"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err and not out.exists()
