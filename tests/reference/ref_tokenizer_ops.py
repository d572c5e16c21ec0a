"""Tokenizer API calls run the same way on transformers' tokenizers (in `.venv-ref`) and on ours (in the tests).

No transformers import here: `ref_tokenizer.py` / `ref_tokenizer_fast.py` run these on `T5Tokenizer` /
`T5TokenizerFast`, the tests on `MT5Tokenizer` / `MT5TokenizerFast`, and the serialized results must be equal.

An op is {"method", "args", "kwargs", "sort"}: a method called (or an attribute read, such as `vocab_size`),
`{"tensor": "pt"|"np", "values"}` in its arguments made a tensor first; "sort" sorts a list result (set order
in transformers' `get_sentinel_tokens`). The pseudo-method `tokens_to_string` runs
`convert_tokens_to_string(tokenize(text))`. A load is {"kwargs", "texts"}: `from_pretrained(dir, **kwargs)`.
Results: tensors as {"tensor", "dtype", "shape", "values"}, mappings as {"type", "keys", "items"}, errors as
{"error": exception class name}.
"""
from collections.abc import Mapping

import numpy as np
import torch


def materialize(value):
    if isinstance(value, dict) and "tensor" in value and set(value) == {"tensor", "values"}:
        return torch.tensor(value["values"]) if value["tensor"] == "pt" else np.asarray(value["values"])
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [materialize(v) for v in value]
    return value


def serialize(value):
    if isinstance(value, torch.Tensor):
        return {"tensor": "pt", "dtype": str(value.dtype), "shape": list(value.shape), "values": value.tolist()}
    if isinstance(value, np.ndarray):
        values = [serialize(v) for v in value] if value.dtype == object else value.tolist()  # ragged rows
        return {"tensor": "np", "dtype": str(value.dtype), "shape": list(value.shape), "values": values}
    if isinstance(value, Mapping):
        return {"type": type(value).__name__, "keys": list(value), "items": {k: serialize(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return [serialize(v) for v in value]
    return value


def run_op(tok, op: dict):
    try:
        if op["method"] == "tokens_to_string":
            value = tok.convert_tokens_to_string(tok.tokenize(*op["args"]))
        else:
            target = getattr(tok, op["method"])
            args, kwargs = materialize(op.get("args", [])), materialize(op.get("kwargs", {}))
            value = target(*args, **kwargs) if callable(target) else target
    except Exception as err:  # the error's type is part of the behaviour compared
        return {"error": type(err).__name__}
    return serialize(sorted(value) if op.get("sort") else value)


def run_load(cls, folder, load: dict):
    try:
        tok = cls.from_pretrained(folder, **load["kwargs"])
    except Exception as err:
        return {"error": type(err).__name__}
    return {"vocab_size": tok.vocab_size, "len": len(tok), "additional": list(tok.additional_special_tokens),
            "sentinels": sorted(tok.get_sentinel_token_ids()), "model_max_length": tok.model_max_length,
            "ids": [tok(t)["input_ids"] for t in load["texts"]], "tokens": [tok.tokenize(t) for t in load["texts"]]}
