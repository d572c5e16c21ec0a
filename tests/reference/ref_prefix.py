"""Reference side of the constrained-decoding tests: transformers 4.57's generate() with a
`prefix_allowed_tokens_fn`; runs in .venv-ref.

    ref_prefix.py JOBS.json OUT.json
JOBS.json: {"cases": [{"name", "dir", "family", "input_ids", "attention_mask", "kwargs", "prefix"}]}, where
"prefix" is {"kind": "table", "table": {last token: [allowed]}, "default": [allowed], "per_batch": [ids]}
(allowed = table[last] or default, plus per_batch[batch_id % len]) or {"kind": "span", "context": [[ids] per
batch], "eos": 1} (model/constraints.py's context_span_constraint, loaded from its file: no package import).
-> OUT.json: {name: {"sequences": [[...]], "sequences_scores": [...] (beams)}}
"""
import importlib.util
import json
import sys
from pathlib import Path

import torch
import transformers
from refjobs import Models, sequences_entry

assert transformers.__version__.startswith("4.57"), transformers.__version__
ROOT = Path(__file__).resolve().parents[2]


def constraints_module():
    spec = importlib.util.spec_from_file_location("constraints", ROOT / "model" / "constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prefix_fn(spec):
    if spec["kind"] == "table":
        table, default, per_batch = spec["table"], spec["default"], spec["per_batch"]
        return lambda batch_id, ids: table.get(str(int(ids[-1])), default) + [per_batch[batch_id % len(per_batch)]]
    fns = [constraints_module().context_span_constraint(c, spec["eos"]) for c in spec["context"]]
    return lambda batch_id, ids: fns[batch_id](batch_id, ids)


def main():
    jobs = json.load(open(sys.argv[1]))
    out, models = {}, Models()
    for case in jobs["cases"]:
        with torch.no_grad():
            res = models.for_case(case).generate(input_ids=torch.tensor(case["input_ids"]),
                                       attention_mask=torch.tensor(case["attention_mask"]),
                                       return_dict_in_generate=True, output_scores=True,
                                       prefix_allowed_tokens_fn=prefix_fn(case["prefix"]), **case["kwargs"])
        out[case["name"]] = sequences_entry(res)
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
