"""Reference tokenizer outputs from transformers 4.57 `T5Tokenizer` (slow, sentencepiece), run in `.venv-ref`.

Usage: ref_tokenizer.py REQUEST.json RESULT.json. The request holds a list of cases:
  {"name", "dir", "self_added_sentinels": null | int,
   "tokenize": [text], "decode": [[id]], "calls": [{"text", "text_pair", "text_target", "kwargs"}]}
Encoding uses `T5Tokenizer.from_pretrained(dir)`. Decoding does too, unless `self_added_sentinels` is set: then
the tokenizer is built from spiece.model alone and adds the `<extra_id_N>` tokens itself, because a slow
T5Tokenizer that reloads UMT5-style added sentinels can decode wrongly (see shared/REFERENCE.md).
Optional "ops" and "loads" run API calls (tests/reference/ref_tokenizer_ops.py).
The result mirrors the request: {"name": {"tokenize", "ids", "decode", "decode_skip", "decode_raw", "calls",
"len", "ops", "loads"}}.
"""
import json
import sys
import warnings
from pathlib import Path

from transformers import AddedToken, T5Tokenizer
from ref_tokenizer_ops import run_load, run_op
from transformers.utils import logging

logging.set_verbosity_error()
warnings.simplefilter("ignore")


def self_added(folder: str, n: int) -> T5Tokenizer:
    """spiece.model plus n sentinels added in id order (<extra_id_{n-1}> first), UMT5's layout."""
    config = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    tok = T5Tokenizer(str(Path(folder) / "spiece.model"), extra_ids=0, additional_special_tokens=[],
                      clean_up_tokenization_spaces=config.get("clean_up_tokenization_spaces", False))
    tokens = [AddedToken(f"<extra_id_{i}>", lstrip=False, rstrip=False, normalized=False, special=True)
              for i in reversed(range(n))]
    tok.add_special_tokens({"additional_special_tokens": tokens})
    return tok


def run_case(case: dict) -> dict:
    tok = T5Tokenizer.from_pretrained(case["dir"])
    decoder = tok if case.get("self_added_sentinels") is None else self_added(case["dir"], case["self_added_sentinels"])
    out = {
        "tokenize": [tok.tokenize(t) for t in case.get("tokenize", [])],
        "ids": [tok(t)["input_ids"] for t in case.get("tokenize", [])],
        "decode": [decoder.decode(ids) for ids in case.get("decode", [])],
        "decode_skip": [decoder.decode(ids, skip_special_tokens=True) for ids in case.get("decode", [])],
        "decode_raw": [decoder.decode(ids, clean_up_tokenization_spaces=False) for ids in case.get("decode", [])],
        "calls": [],
        "len": len(decoder),
        "ops": [run_op(tok, op) for op in case.get("ops", [])],
        "loads": [run_load(T5Tokenizer, case["dir"], load) for load in case.get("loads", [])],
    }
    for call in case.get("calls", []):
        result = tok(call.get("text"), text_pair=call.get("text_pair"), text_target=call.get("text_target"),
                     **call.get("kwargs", {}))
        out["calls"].append({k: v for k, v in result.items()})
    return out


def main() -> None:
    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    result = {case["name"]: run_case(case) for case in request["cases"]}
    Path(sys.argv[2]).write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
