"""Reference outputs from transformers 4.57 `T5TokenizerFast` (the `tokenizers` library), run in `.venv-ref`.

Usage: ref_tokenizer_fast.py REQUEST.json RESULT.json. The request holds:
  {"convert": [[spm_dir, out_dir, json_only_dir]], "cases": [{"name", "dir", "tokenize": [text], "decode": [[id]],
   "calls": [{"text", "text_pair", "text_target", "kwargs"}], "sentinels": [token]}]}
First each `spm_dir` (spiece.model + json files) is converted: `T5TokenizerFast.from_pretrained(spm_dir)`
saved to `out_dir`, which then holds tokenizer.json and spiece.model (what a transformers 4.x fine-tune ships),
and copied to `json_only_dir` without spiece.model (what transformers 5 saves). Then each case
loads `T5TokenizerFast.from_pretrained(dir)`. The result: {"name": {"tokens", "ids", "masks", "offsets",
"decode", "decode_skip", "decode_raw", "calls", "len", "vocab_size", "sentinels"}}; a call that raises records
{"error": text}.
Optional "ops" and "loads" run API calls (tests/reference/ref_tokenizer_ops.py).
"""
import json
import shutil
import sys
import warnings
from pathlib import Path

from transformers import T5TokenizerFast
from ref_tokenizer_ops import run_load, run_op
from transformers.utils import logging

logging.set_verbosity_error()
warnings.simplefilter("ignore")


def call(tok, c: dict) -> dict:
    try:
        result = tok(c.get("text"), text_pair=c.get("text_pair"), text_target=c.get("text_target"),
                     **c.get("kwargs", {}))
    except Exception as err:  # the tokenizers library refuses some truncations
        return {"error": str(err)}
    return {k: [list(map(list, row)) for row in v] if k == "offset_mapping" and v and isinstance(v[0], list)
            else ([list(o) for o in v] if k == "offset_mapping" else v) for k, v in result.items()}


def run_case(case: dict) -> dict:
    tok = T5TokenizerFast.from_pretrained(case["dir"])
    texts, decode = case.get("tokenize", []), case.get("decode", [])
    single = [tok(t, return_offsets_mapping=True) for t in texts]
    return {
        "tokens": [tok.tokenize(t) for t in texts],
        "ids": [e["input_ids"] for e in single],
        "masks": [e["attention_mask"] for e in single],
        "offsets": [[list(o) for o in e["offset_mapping"]] for e in single],
        "decode": [tok.decode(ids) for ids in decode],
        "decode_skip": [tok.decode(ids, skip_special_tokens=True) for ids in decode],
        "decode_raw": [tok.decode(ids, clean_up_tokenization_spaces=False) for ids in decode],
        "calls": [call(tok, c) for c in case.get("calls", [])],
        "len": len(tok),
        "vocab_size": tok.vocab_size,
        "sentinels": [tok.convert_tokens_to_ids(t) for t in case.get("sentinels", [])],
        "ops": [run_op(tok, op) for op in case.get("ops", [])],
        "loads": [run_load(T5TokenizerFast, case["dir"], load) for load in case.get("loads", [])],
    }


def main() -> None:
    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    for source, out, json_only in request.get("convert", []):
        T5TokenizerFast.from_pretrained(source).save_pretrained(out)
        shutil.copytree(out, json_only)
        (Path(json_only) / "spiece.model").unlink()
    result = {case["name"]: run_case(case) for case in request.get("cases", [])}
    Path(sys.argv[2]).write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
