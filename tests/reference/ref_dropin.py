"""Reference side of the drop-in API tests (tests/test_dropin.py); runs in .venv-ref with transformers 4.57.x.

    ref_dropin.py JOBS.json   - runs every section of JOBS.json, writes each case's outputs next to its inputs
                                and prints one JSON object of the non-tensor results.

JOBS.json: {"forward": [{"name", "family", "cls", "config", "seed", "dir", "inputs", "out"}],
            "resize": [{"name", "dir", "family", "cls", "new", "multiple"}],
            "resave": [{"name", "family", "src", "dst"}],
            "mismatched": {"family", "dir", "num_labels"}}
"""
import json
import os
import sys
import warnings

import torch
import transformers
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from dropin_calls import config_changes, flatten, forward_inputs, run_calls  # noqa: E402

assert transformers.__version__.startswith("4.57"), transformers.__version__
warnings.simplefilter("ignore")
transformers.logging.set_verbosity_error()


def model_class(family, cls):
    return getattr(transformers, ("UMT5" if family == "umt5" else "MT5") + cls)


def forward(case):
    config = getattr(transformers, ("UMT5" if case["family"] == "umt5" else "MT5") + "Config")(**case["config"])
    torch.manual_seed(case["seed"])
    model = model_class(case["family"], case["cls"])(config).eval()
    model.save_pretrained(case["dir"])
    model = model_class(case["family"], case["cls"]).from_pretrained(case["dir"], attn_implementation="eager").eval()
    flat, meta = {}, {}
    for name, value in run_calls(model, case["cls"], load_file(case["inputs"])).items():
        if type(value) is dict:  # a result record, not a (dict-like) model output
            meta[name] = value
        else:
            flatten(name, value, flat, meta)
    # config flags given at load time (transformers' stacks copy the config then: later edits do not reach them)
    flagged = model_class(case["family"], case["cls"]).from_pretrained(
        case["dir"], attn_implementation="eager", output_attentions=True, output_hidden_states=True).eval()
    with torch.no_grad():
        flatten("config_flags", flagged(**forward_inputs(case["cls"], load_file(case["inputs"]))), flat, meta)
    save_file(flat, case["out"])
    return meta


def resize(case):
    model = model_class(case["family"], case["cls"]).from_pretrained(case["dir"]).eval()
    emb = model.resize_token_embeddings(case["new"], pad_to_multiple_of=case["multiple"])
    out = model.get_output_embeddings()
    return {"input": list(emb.weight.shape), "shared": list(model.get_input_embeddings().weight.shape),
            "output": None if out is None else list(out.weight.shape), "vocab_size": model.config.vocab_size,
            "tied": out is not None and out.weight is emb.weight,
            "same_object": emb is model.get_input_embeddings()}


def resave(case):
    model = model_class(case["family"], "ForConditionalGeneration").from_pretrained(case["src"])
    model.save_pretrained(case["dst"])
    files = {}
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(case["dst"], name)
        files[name] = json.load(open(path)) if os.path.exists(path) else None
    reloaded = model_class(case["family"], "ForConditionalGeneration").from_pretrained(case["dst"])
    g = reloaded.generation_config
    files["reloaded"] = {k: getattr(g, k) for k in ("num_beams", "max_length", "no_repeat_ngram_size",
                                                     "length_penalty", "early_stopping")}
    return files


def mismatched(job):
    cls = model_class(job["family"], "ForSequenceClassification")
    model, info = cls.from_pretrained(job["dir"], num_labels=job["num_labels"], ignore_mismatched_sizes=True,
                                      output_loading_info=True)
    saved, state = load_file(os.path.join(job["dir"], "model.safetensors")), model.state_dict()
    out = {"mismatched": [[k, list(saved[k].shape), list(state[k].shape)] for k in info["mismatched_keys"]],
           "missing": sorted(info["missing_keys"]), "out_proj": list(model.classification_head.out_proj.weight.shape)}
    try:
        cls.from_pretrained(job["dir"], num_labels=job["num_labels"])
        out["strict"] = None
    except Exception as e:  # noqa: BLE001
        out["strict"] = type(e).__name__
    return out


def config_behaviour():
    out = {}
    for family in ("mt5", "umt5"):
        cfg_cls = getattr(transformers, ("UMT5" if family == "umt5" else "MT5") + "Config")
        c = cfg_cls(d_model=24, num_heads=3, num_layers=2, d_kv=8, bos_token_id=5, return_dict=False,
                    output_attentions=True, torch_dtype="bfloat16", architectures=["X"], problem_type="regression")
        row = {k: getattr(c, k) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "head_dim",
                                          "bos_token_id", "return_dict", "output_attentions",
                                          "output_hidden_states", "use_cache", "architectures", "problem_type",
                                          "num_labels", "tie_word_embeddings", "use_return_dict")}
        row["dtype"] = str(c.dtype)
        row["attribute_map"] = cfg_cls.attribute_map
        row.update(config_changes(c, cfg_cls))
        out[family] = row
    return out


def main():
    jobs = json.load(open(sys.argv[1]))
    result = {"forward": {c["name"]: forward(c) for c in jobs.get("forward", [])},
              "resize": {c["name"]: resize(c) for c in jobs.get("resize", [])},
              "resave": {c["name"]: resave(c) for c in jobs.get("resave", [])},
              "config": config_behaviour()}
    if jobs.get("mismatched"):
        result["mismatched"] = mismatched(jobs["mismatched"])
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
