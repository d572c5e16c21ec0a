"""Reference side of tests/test_dropin_gaps.py; runs in .venv-ref with transformers 4.57.x.

    ref_dropin_gaps.py JOBS.json OUT.json

JOBS.json: {"config", "seed", "dir", "inputs", "out", "tokenizer", "texts", "pairs"}: builds MT5ForConditionalGeneration
from the config with the seed and saves it to dir, then makes the drop-in calls of the nine gaps on it and on
T5Tokenizer.from_pretrained(tokenizer); results in OUT.json, tensors in the safetensors file `out`.
"""
import json
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

assert transformers.__version__.startswith("4.57"), transformers.__version__


def error_of(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e).__name__
    return None


def model_calls(job, x, tensors):
    cls = transformers.MT5ForConditionalGeneration
    m = cls.from_pretrained(job["dir"]).eval()
    ids, mask, dec = x["input_ids"], x["attention_mask"], x["decoder_input_ids"]
    out = {"no_inputs_error": error_of(lambda: m.generate(max_new_tokens=3)),
           "bos": m.generate(bos_token_id=5, max_new_tokens=6).tolist(),
           "default_max_length": m.generation_config.max_length,
           "default_shape": list(m.generate(ids, attention_mask=mask).shape),
           "max_length_20_shape": list(m.generate(ids, attention_mask=mask, max_length=20).shape),
           "prompt_default_shape": list(m.generate(ids, attention_mask=mask, decoder_input_ids=dec[:, :3]).shape)}
    with torch.no_grad():
        first = m(input_ids=ids, attention_mask=mask, decoder_input_ids=dec[:, :2], use_cache=True)
    out["continued"] = m.generate(ids, attention_mask=mask, decoder_input_ids=dec[:, :4],
                                  past_key_values=first.past_key_values, max_new_tokens=5).tolist()
    out["fresh"] = m.generate(ids, attention_mask=mask, decoder_input_ids=dec[:, :4], max_new_tokens=5).tolist()
    loaded, info = cls.from_pretrained(job["dir"], output_loading_info=True)
    out["info"] = {"type": type(info).__name__, "keys": list(info),
                   "values": {k: [type(v).__name__, sorted(map(str, v))] for k, v in info.items()}}
    _, head_info = transformers.MT5ForSequenceClassification.from_pretrained(job["dir"], output_loading_info=True)
    out["head_info"] = {k: sorted(map(str, v)) for k, v in head_info.items()}
    over = cls.from_pretrained(job["dir"], dropout_rate=0.25, output_attentions=True)
    out["override"] = {"dropout_rate": over.config.dropout_rate, "output_attentions": over.config.output_attentions,
                       "layer_p": over.encoder.block[0].layer[0].dropout.p,
                       "ff_p": over.decoder.block[1].layer[2].DenseReluDense.dropout.p}
    labels = x["labels"]
    out["head_mask_alone_error"] = error_of(lambda: m(input_ids=ids, attention_mask=mask, labels=labels,
                                                      head_mask=x["head_mask"]))
    with torch.no_grad():
        both = m(input_ids=ids, attention_mask=mask, labels=labels, head_mask=x["head_mask"],
                 decoder_head_mask=x["head_mask"])
        plain = m(input_ids=ids, attention_mask=mask, labels=labels)
    tensors.update(head_masked_logits=both.logits, plain_logits=plain.logits)
    return out


def tokenizer_calls(job):
    tok = transformers.T5Tokenizer.from_pretrained(job["tokenizer"])
    texts, pairs = job["texts"], [tuple(p) for p in job["pairs"]]
    out = {"truncation_side": tok.truncation_side,
           "batch": dict(tok.batch_encode_plus(texts)),
           "batch_pairs": dict(tok.batch_encode_plus(pairs)),
           "batch_padded": dict(tok.batch_encode_plus(texts, padding=True, max_length=6, truncation=True)),
           "no_mask": dict(tok(texts, return_attention_mask=False)),
           "no_mask_padded": dict(tok(texts, padding=True, return_attention_mask=False)),
           "no_mask_plus": dict(tok.encode_plus(texts[0], return_attention_mask=False)),
           "no_mask_target": dict(tok(texts, text_target=texts[::-1], return_attention_mask=False))}
    tok.truncation_side = "left"
    out["left"] = dict(tok(texts, truncation=True, max_length=5))
    out["left_pairs"] = dict(tok([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=7))
    out["left_only_second"] = dict(tok([a for a, _ in pairs], [b for _, b in pairs], truncation="only_second",
                                       max_length=9))
    left = transformers.T5Tokenizer.from_pretrained(job["tokenizer"], truncation_side="left")
    out["left_kwarg"] = [left.truncation_side, dict(left(texts, truncation=True, max_length=5))]
    return out


def main():
    job = json.load(open(sys.argv[1]))
    config = transformers.MT5Config(**job["config"])
    torch.manual_seed(job["seed"])
    transformers.MT5ForConditionalGeneration(config).save_pretrained(job["dir"])
    tensors = {}
    out = {"model": model_calls(job, load_file(job["inputs"]), tensors), "tokenizer": tokenizer_calls(job)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, job["out"])
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
