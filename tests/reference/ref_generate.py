"""Reference side of the generation tests; runs in .venv-ref with transformers 4.57.x.

    ref_generate.py JOBS.json OUT.json
JOBS.json: {"cases": [{"name", "dir", "family", "input_ids", "attention_mask", "kwargs" | "decoder_input_ids"}]}
-> OUT.json:
{name: {"sequences": [[...]], "scores": [[...]] (sequence scores for beams), "attentions": ... }}
"""
import json
import sys

import torch
import transformers
from refjobs import Models, sequences_entry

assert transformers.__version__.startswith("4.57"), transformers.__version__


def main():
    jobs = json.load(open(sys.argv[1]))
    out, models = {}, Models(attn_implementation="eager")
    for case in jobs["cases"]:
        model = models.for_case(case)
        ids = torch.tensor(case["input_ids"])
        mask = torch.tensor(case["attention_mask"])
        if "decoder_input_ids" in case:  # a teacher-forced pass with attention weights
            with torch.no_grad():
                res = model(input_ids=ids, attention_mask=mask, output_attentions=True,
                            decoder_input_ids=torch.tensor(case["decoder_input_ids"]))
            out[case["name"]] = {k: [a.tolist() for a in getattr(res, k)]
                                 for k in ("encoder_attentions", "decoder_attentions", "cross_attentions")}
            continue
        with torch.no_grad():
            res = model.generate(input_ids=ids, attention_mask=mask, return_dict_in_generate=True,
                                 output_scores=True, **case["kwargs"])
        out[case["name"]] = sequences_entry(res)
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
