"""Reference side of the model parity tests; runs in .venv-ref with transformers 4.57.x.

    ref_models.py make JOBS.json   - for each case: build the transformers model from its config with a fixed
                                     seed, save it in the case's format, run the case's inputs, save outputs.
    ref_models.py check JOBS.json  - for each case: load the checkpoint *we* saved, run the inputs, save outputs.
    ref_models.py count JOBS.json  - parameter counts of configs, built on the meta device.

JOBS.json: {"cases": [{"name", "family", "cls", "config", "seed", "format", "dir", "inputs", "out"}]}
"""
import json
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

assert transformers.__version__.startswith("4.57"), transformers.__version__


def build(case):
    prefix = "UMT5" if case["family"] == "umt5" else "MT5"
    cls = getattr(transformers, prefix + case["cls"])
    config_cls = getattr(transformers, prefix + "Config")
    config = config_cls(**case["config"])
    config._attn_implementation = "eager"
    return cls, config


def save(model, case):
    fmt, out = case["format"], case["dir"]
    shard = "2KB" if fmt.startswith("sharded") else "10GB"
    model.save_pretrained(out, safe_serialization=fmt.endswith("safetensors"), max_shard_size=shard)


def run(model, case):
    inputs = {k: v for k, v in load_file(case["inputs"]).items()}
    with torch.no_grad():
        out = model(**inputs, output_attentions=True, output_hidden_states=True, return_dict=True)
    flat = {}
    for key, value in out.items():
        if key == "past_key_values" or value is None:
            continue
        if isinstance(value, tuple):
            for i, v in enumerate(value):
                flat[f"{key}.{i}"] = v.clone()
        else:
            flat[key] = value.clone()
    save_file(flat, case["out"])


def main():
    mode, jobs_path = sys.argv[1], sys.argv[2]
    jobs = json.load(open(jobs_path))
    counts = {}
    for case in jobs["cases"]:
        cls, config = build(case)
        if mode == "count":
            with torch.device("meta"):
                counts[case["name"]] = cls(config).num_parameters()
            continue
        if mode == "make":
            torch.manual_seed(case["seed"])
            model = cls(config).eval()
            save(model, case)
        else:
            model = cls.from_pretrained(case["dir"], attn_implementation="eager").eval()
        run(model, case)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
