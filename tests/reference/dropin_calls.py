"""The transformers-style calls of the drop-in tests, written once and run on both sides.

Imports only torch: `tests/test_dropin.py` runs these on our classes, `ref_dropin.py` (in .venv-ref) on
transformers 4.57's, with the same checkpoint and inputs; the flattened results are compared.
"""
import json

import torch

SEQ2SEQ = ("Model", "ForConditionalGeneration", "ForSequenceClassification", "ForQuestionAnswering")


def flatten(prefix, value, out, meta):
    """Tensors of an output (ModelOutput, tuple, cache) under dotted names; `meta` gets field names and types."""
    if value is None:
        return
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().float().clone().contiguous()
        return
    if hasattr(value, "to_tuple") and hasattr(value, "keys"):  # a ModelOutput
        meta[prefix] = {"keys": list(value.keys()), "len": len(value), "iter": [str(k) for k in value],
                        "tuple_len": len(value.to_tuple())}
        for key in value.keys():
            flatten(f"{prefix}.{key}", value[key], out, meta)
        return
    if isinstance(value, (tuple, list)) or (hasattr(value, "__getitem__") and hasattr(value, "__len__")):
        kind = "tuple" if isinstance(value, (tuple, list)) else "cache"
        meta[prefix] = {"kind": kind, "len": len(value)}
        for i in range(len(value)):
            flatten(f"{prefix}.{i}", value[i], out, meta)


def forward_inputs(cls, inputs):
    """The model's keyword arguments for `cls` from the shared inputs file."""
    base = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    if cls == "ForConditionalGeneration":
        base["labels"] = inputs["labels"]
    elif cls == "Model":
        base["decoder_input_ids"] = inputs["decoder_input_ids"]
    elif cls == "ForSequenceClassification":
        base["labels"] = inputs["seq_labels"]
    elif cls == "ForTokenClassification":
        base["labels"] = inputs["token_labels"]
    elif cls == "ForQuestionAnswering":
        base.update(start_positions=inputs["start_positions"], end_positions=inputs["end_positions"])
    return base


def attempt(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the error's type is part of the behaviour compared
        return {"error": type(e).__name__}


def with_config(model, changes, fn):
    old = {k: getattr(model.config, k) for k in changes}
    for k, v in changes.items():
        setattr(model.config, k, v)
    try:
        return fn()
    finally:
        for k, v in old.items():
            setattr(model.config, k, v)


def run_calls(model, cls, inputs):
    """name -> output (or {"error": type name}) of every call the drop-in tests compare."""
    base = forward_inputs(cls, inputs)
    seq2seq = cls in SEQ2SEQ
    dec_ids = inputs["decoder_input_ids"]
    results = {}
    with torch.no_grad():
        results["plain"] = model(**base)
        results["tuple"] = model(**base, return_dict=False)
        results["config_return_dict"] = with_config(model, {"return_dict": False}, lambda: model(**base))
        out = model(**base, output_hidden_states=True)
        results["index0"] = out[0]
        results["index_slice"] = out[1:3]
        results["index_neg"] = out[-1]
        results["unpacked_keys"] = {"keys": [str(k) for k in out]}
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        no_ids = {k: v for k, v in base.items() if k != "input_ids"}
        if seq2seq:
            no_ids["decoder_input_ids"] = dec_ids
        results["inputs_embeds"] = attempt(lambda: model(**no_ids, inputs_embeds=embeds))
        if seq2seq:
            dec_embeds = model.get_input_embeddings()(dec_ids)
            no_dec = {k: v for k, v in base.items() if k != "decoder_input_ids"}
            results["decoder_inputs_embeds"] = attempt(lambda: model(**no_dec, decoder_inputs_embeds=dec_embeds))
        masks = {"head_mask": inputs["head_mask"]}
        if seq2seq:
            masks.update(decoder_head_mask=inputs["decoder_head_mask"],
                         cross_attn_head_mask=inputs["cross_attn_head_mask"])
        results["head_masks"] = model(**base, **masks, output_attentions=True)
        # (H,) masks; both given: head_mask alone hits a NameError in transformers 4.57 (see test_dropin)
        one_d = {k: inputs["head_mask_1d"] for k in masks}
        results["head_mask_1d"] = attempt(lambda: model(**base, **one_d, output_attentions=True))
        if seq2seq:
            for name in ("mask4d_1", "mask4d_h"):
                results[name] = attempt(lambda: model(**{**base, "decoder_input_ids": dec_ids},
                                                      decoder_attention_mask=inputs[name]))
        if cls in ("Model", "ForConditionalGeneration"):
            results.update(cache_calls(model, base, inputs))
        if cls not in ("ForSequenceClassification", "ForTokenClassification"):  # transformers has none there
            enc = model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                      output_hidden_states=True)
            results["encoder_call"] = enc
            results["encoder_call_tuple"] = model.get_encoder()(input_ids=inputs["input_ids"], return_dict=False)
        if cls in ("Model", "ForConditionalGeneration"):
            enc = model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            results["decoder_call"] = model.get_decoder()(
                input_ids=dec_ids, encoder_hidden_states=enc.last_hidden_state,
                encoder_attention_mask=inputs["attention_mask"], use_cache=True)
    results["output_embeddings"] = {"shape": None if model.get_output_embeddings() is None
                                    else list(model.get_output_embeddings().weight.shape)}
    return results


def cache_calls(model, base, inputs):
    """past_key_values kept with labels, indexed as users do, and fed back for one more step."""
    results = {}
    dec_ids = inputs["decoder_input_ids"]
    first = {k: v for k, v in base.items() if k != "labels"}
    first["decoder_input_ids"] = dec_ids[:, :-1]
    if "labels" in base:
        results["labels_use_cache"] = model(**base, use_cache=True)
    out = model(**first, use_cache=True)
    pkv = out.past_key_values
    results["pkv_len"] = {"len": len(pkv)}
    results["pkv_0"] = tuple(pkv[0])
    results["pkv_last"] = tuple(pkv[len(pkv) - 1])
    results["pkv_iter"] = tuple(tuple(layer) for layer in pkv)
    step = {k: v for k, v in first.items() if k not in ("decoder_input_ids", "input_ids")}
    results["cache_step"] = model(**step, encoder_outputs=(out.encoder_last_hidden_state,),
                                  decoder_input_ids=dec_ids[:, -1:], past_key_values=pkv, use_cache=True)
    results["config_no_cache"] = with_config(model, {"use_cache": False}, lambda: model(**first))
    return results


def config_changes(c, cfg_cls) -> dict:
    """What a config does when a user changes it: num_labels resizes id2label, aliases set the real fields, and it
    goes through JSON and a dict. `c` is changed in place."""
    row = {}
    c.num_labels = 4
    row["id2label_4"] = {str(k): v for k, v in c.id2label.items()}
    row["label2id_4"] = c.label2id
    c.hidden_size = 40
    row["d_model_after_alias_set"] = c.d_model
    a = cfg_cls(hidden_size=48, num_attention_heads=4, num_hidden_layers=3)
    row["alias_kwargs"] = [a.d_model, a.num_heads, a.num_layers, a.num_decoder_layers]
    d = json.loads(c.to_json_string())
    row["json_values"] = {k: d.get(k) for k in ("d_model", "num_heads", "bos_token_id", "return_dict",
                                                "output_attentions", "problem_type", "architectures")}
    row["from_dict"] = cfg_cls.from_dict(c.to_dict()).d_model
    return row
