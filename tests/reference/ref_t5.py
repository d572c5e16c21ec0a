"""Reference side of tests/test_t5_family.py; runs in .venv-ref with transformers 4.57.x.

    ref_t5.py JOBS.json OUT.json

JOBS.json holds any of:
- "make":  [{"name", "cls", "config", "seed", "dir", "max_shard_size", "inputs", "out", "generate": [kwargs]}]
           build T5<cls> from T5Config(config) with the seed, save it, record the forward outputs (safetensors at
           "out") and the tokens of each generate(**kwargs) on the inputs (OUT.json[name]).
- "check": [{"name", "cls", "dir", "inputs", "out"}]: load the checkpoint *we* saved, record the forward outputs.
- "count": [{"name", "config"}]: parameter counts of T5ForConditionalGeneration, built on the meta device.
- "tokenizers": [{"name", "spiece", "dir", "fast_dir", "kwargs", "texts", "decode"}]: T5Tokenizer(spiece, **kwargs)
           saved to dir, T5TokenizerFast from it saved to fast_dir; the ids of each text and the decodes of each id
           list by both (OUT.json[name]).
"""
import json
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

assert transformers.__version__.startswith("4.57"), transformers.__version__


def forward(model, inputs_path, out_path):
    inputs = load_file(inputs_path)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True, output_hidden_states=True, return_dict=True)
    flat = {}
    for key, value in out.items():
        if key == "past_key_values" or value is None:
            continue
        if isinstance(value, tuple):
            flat.update({f"{key}.{i}": v.clone() for i, v in enumerate(value)})
        else:
            flat[key] = value.clone()
    save_file(flat, out_path)
    return inputs


def make(case):
    config = transformers.T5Config(**case["config"])
    config._attn_implementation = "eager"
    torch.manual_seed(case["seed"])
    model = getattr(transformers, "T5" + case["cls"])(config).eval()
    model.save_pretrained(case["dir"], max_shard_size=case.get("max_shard_size") or "10GB",
                          safe_serialization=case.get("safetensors", True))
    inputs = forward(model, case["inputs"], case["out"])
    runs = []
    for kwargs in case.get("generate", []):
        with torch.no_grad():
            seqs = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **kwargs)
        runs.append(seqs.tolist())
    return runs


def check(case):
    model = getattr(transformers, "T5" + case["cls"]).from_pretrained(case["dir"], attn_implementation="eager")
    forward(model.eval(), case["inputs"], case["out"])


def tokenizers(case):
    slow = transformers.T5Tokenizer(case["spiece"], **case.get("kwargs", {}))
    slow.save_pretrained(case["dir"])
    fast = transformers.T5TokenizerFast.from_pretrained(case["dir"])
    fast.save_pretrained(case["fast_dir"])
    result = {"len": len(slow), "pad": slow.pad_token_id, "eos": slow.eos_token_id, "unk": slow.unk_token_id}
    for name, tok in (("slow", slow), ("fast", fast)):
        result[name] = {"ids": [tok(t)["input_ids"] for t in case["texts"]],
                        "decode": [tok.decode(ids) for ids in case["decode"]],
                        "decode_skip": [tok.decode(ids, skip_special_tokens=True) for ids in case["decode"]]}
    return result


def main():
    jobs = json.load(open(sys.argv[1]))
    out = {}
    for case in jobs.get("make", []):
        out[case["name"]] = make(case)
    for case in jobs.get("check", []):
        check(case)
    for case in jobs.get("count", []):
        with torch.device("meta"):
            out[case["name"]] = transformers.T5ForConditionalGeneration(
                transformers.T5Config(**case["config"])).num_parameters()
    for case in jobs.get("tokenizers", []):
        out[case["name"]] = tokenizers(case)
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
