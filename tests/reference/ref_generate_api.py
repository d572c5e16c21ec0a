"""Reference side of the generate() API tests: transformers 4.57's dict outputs; runs in .venv-ref.

    ref_generate_api.py JOBS.json OUT.pt
JOBS.json: {"cases": [{"name", "dir", "family", "input_ids", "attention_mask", "kwargs", "source"
("input_ids" | "input_ids_nomask" | "inputs_embeds" | "encoder_outputs"), "decoder_input_ids" (optional),
"seed" (optional: sampling draws from torch's global generator seeded with it)}]}
-> OUT.pt (torch.save, plain tensors, tuples, lists, strings): {name: {"class", "fields" (all field names in
order), "keys" (the set ones), "values" {field: tensor | tuple of tensors | tuple of tuples}, "cache" (per layer
(self k, self v, cross k, cross v)) or None}}
"""
import dataclasses
import json
import sys

import torch
import transformers
from refjobs import Models

assert transformers.__version__.startswith("4.57"), transformers.__version__


def plain(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return tuple(plain(v) for v in value)
    return value


def run(model, case):
    ids = torch.tensor(case["input_ids"])
    mask = torch.tensor(case["attention_mask"])
    kwargs = dict(case["kwargs"])
    if "decoder_input_ids" in case:
        kwargs["decoder_input_ids"] = torch.tensor(case["decoder_input_ids"])
    source = case.get("source", "input_ids")
    if source == "input_ids":
        kwargs.update(input_ids=ids, attention_mask=mask)
    elif source == "input_ids_nomask":  # transformers infers the mask from the pad tokens
        kwargs.update(input_ids=ids)
    elif source == "inputs_embeds":
        kwargs.update(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask)
    else:
        kwargs.update(encoder_outputs=model.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True),
                      attention_mask=mask)
    if "seed" in case:
        torch.manual_seed(case["seed"])
    with torch.no_grad():
        return model.generate(return_dict_in_generate=True, **kwargs)


def main():
    jobs = json.load(open(sys.argv[1]))
    out, models = {}, Models(attn_implementation="eager")
    for case in jobs["cases"]:
        res = run(models.for_case(case), case)
        fields = [f.name for f in dataclasses.fields(res)]
        cache = res.past_key_values
        out[case["name"]] = {
            "class": type(res).__name__, "fields": fields, "keys": list(res.keys()),
            "values": {k: plain(getattr(res, k)) for k in fields if k != "past_key_values"},
            "cache": None if cache is None else plain(cache.to_legacy_cache()),
        }
    torch.save(out, sys.argv[2])


if __name__ == "__main__":
    main()
