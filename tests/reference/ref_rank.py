"""Reference side of the rank-classification tests; runs in .venv-ref with transformers 4.57.x.

    ref_rank.py JOBS.json OUT.json
JOBS.json: {"cases": [{"name", "dir", "family", "prompts": [[ids without </s>]], "choices": [[ids with </s>]]}]}
-> OUT.json: {name: {"sums": [[...]] (B x K), "counts": [...] (K)}}

As T0's evaluation scores a choice: one teacher-forced pass per (prompt, choice), the choice as `labels`
(transformers shifts it right itself), the labels' token log-probabilities summed.
"""
import json
import sys

import torch
import transformers

assert transformers.__version__.startswith("4.57"), transformers.__version__


def main():
    jobs = json.load(open(sys.argv[1]))
    out = {}
    for case in jobs["cases"]:
        prefix = "UMT5" if case["family"] == "umt5" else "MT5"
        model = getattr(transformers, prefix + "ForConditionalGeneration").from_pretrained(case["dir"]).eval()
        sums = []
        for prompt in case["prompts"]:
            row = []
            for choice in case["choices"]:
                labels = torch.tensor([choice])
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([prompt]), labels=labels).logits.float()
                logp = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
                row.append(float(logp.double().sum()))
            sums.append(row)
        out[case["name"]] = {"sums": sums, "counts": [len(c) for c in case["choices"]]}
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
