"""Reference side of tests/test_metricx.py; runs in .venv-ref with transformers 4.57.x.

    ref_metricx.py JOBS.json OUT.json

MetricX (google-research/metricx, metricx23/models.py) runs transformers' mT5 this way: the encoder on the
input, the decoder one step from token 0, score = logits[:, 0, 250089] clamped to [0, 25]. Its reference code no
longer runs on current transformers, so it is reproduced here on `MT5ForConditionalGeneration`.

JOBS.json holds any of:
- "tokenize": [{"name", "dir", "texts", "max_length"}]: MetricX's predict.py tokenization with transformers'
  T5Tokenizer from `dir` (max_length, truncation=True, then the last token removed); OUT.json[name] = ids.
- "score": [{"name", "dir", "dtype", "rows": [[ids]] or "rows_from": a tokenize job's name}]: the checkpoint
  loaded in `dtype`; OUT.json[name] = {"logits": the unclamped logit of each row, all rows in one right-padded
  batch, "dtypes": the model's parameter dtypes}.
"""
import json
import sys

import torch
import transformers

assert transformers.__version__.startswith("4.57"), transformers.__version__
SCORE_TOKEN_ID = 250089


def logits(model, ids: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """MetricX's forward up to the clamp: decoder_input_ids zeros (B, 1), logits[:, 0, 250089]."""
    start = torch.zeros((ids.shape[0], 1), dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=start)
    return out.logits[:, 0, SCORE_TOKEN_ID].float().tolist()


def score(case, rows) -> dict:
    dtype = getattr(torch, case["dtype"])
    model = transformers.MT5ForConditionalGeneration.from_pretrained(case["dir"], dtype=dtype,
                                                                     attn_implementation="eager").eval()
    ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return {"logits": logits(model, ids, mask), "dtypes": sorted({str(p.dtype) for p in model.parameters()})}


def tokenize(case) -> list[list[int]]:
    tok = transformers.T5Tokenizer.from_pretrained(case["dir"])
    encoded = tok(case["texts"], max_length=case["max_length"], truncation=True, padding=False)
    return [ids[:-1] for ids in encoded["input_ids"]]   # predict.py's _remove_eos


def main():
    jobs = json.load(open(sys.argv[1]))
    out = {}
    for case in jobs.get("tokenize", []):
        out[case["name"]] = tokenize(case)
    for case in jobs.get("score", []):
        out[case["name"]] = score(case, out[case["rows_from"]] if "rows_from" in case else case["rows"])
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
