"""Reference side of tests/test_explain.py; runs in .venv-ref with transformers 4.57.x, Captum and inseq.

    ref_explain.py JOBS.json

JOBS.json: {"cases": [{"name", "family" ("mt5"|"umt5"|"t5"), "dir", "inputs", "out", "positions", "ig",
"contrast", "inseq"}]}. For each case the checkpoint at "dir" (ours, saved by the test) is loaded into
transformers' <Family>ForConditionalGeneration, and for the row in "inputs" (safetensors: input_ids,
attention_mask, target_ids, each (1, n)) the log-probability of target token i, as a function of `inputs_embeds`
and `decoder_inputs_embeds` (the shared embeddings of the ids and of the target shifted right), is attributed at
each of "positions" with Captum:
- InputXGradient, Saliency (abs=True): `{kind}.source` (P, S, D), `{kind}.prefix` (P, T, D), as Captum returns them;
- IntegratedGradients for each {"steps", "method", "baseline_token"} in "ig" (zero baselines, the default, or
  that token's embedding at every position): `ig{k}.source`, `ig{k}.prefix`, `ig{k}.delta` (P,) from
  return_convergence_delta;
- "contrast" {"position", "alternative"}: InputXGradient of log p(target[i]) - log p(alternative) at that
  position: `contrast.source` (S, D), `contrast.prefix` (T, D).
"inseq" {"source", "target"} (texts): inseq's value_zeroing with attribute_target=True; saved as
`vz.source` (S, T, L) and `vz.prefix` (T + 1, T, L) as inseq returns them, `vz.source_ids`, `vz.target_ids`.
"""
import json
import sys

import torch
import transformers
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from safetensors.torch import load_file, save_file

assert transformers.__version__.startswith("4.57"), transformers.__version__

CLASSES = {"mt5": transformers.MT5ForConditionalGeneration, "umt5": transformers.UMT5ForConditionalGeneration,
           "t5": transformers.T5ForConditionalGeneration}


def logprob_of(model, target_ids, position, alternative=None):
    """f(source embeddings, prefix embeddings, mask) -> (B,) log p(target[position]) [- log p(alternative)]."""
    token = int(target_ids[0, position])

    def f(source, prefix, mask):
        logits = model(inputs_embeds=source, attention_mask=mask, decoder_inputs_embeds=prefix).logits
        logp = logits[:, position].float().log_softmax(-1)
        return logp[:, token] - (0 if alternative is None else logp[:, alternative])
    return f


def captum_case(model, case, out):
    row = load_file(case["inputs"])
    mask, target = row["attention_mask"], row["target_ids"]
    embed = model.get_input_embeddings()
    with torch.no_grad():
        source = embed(row["input_ids"])
        prefix = embed(model._shift_right(target))
    for kind, method in (("gxi", InputXGradient), ("saliency", Saliency)):
        parts = [method(logprob_of(model, target, i)).attribute((source, prefix), additional_forward_args=(mask,))
                 for i in case["positions"]]
        out[f"{kind}.source"] = torch.cat([p[0] for p in parts])
        out[f"{kind}.prefix"] = torch.cat([p[1] for p in parts])
    for k, ig in enumerate(case["ig"]):
        baselines = None   # Captum's default: zeros
        if ig.get("baseline_token") is not None:
            with torch.no_grad():
                base = embed(torch.tensor([[ig["baseline_token"]]]))
            baselines = (base.expand_as(source), base.expand_as(prefix))
        parts = [IntegratedGradients(logprob_of(model, target, i)).attribute(
            (source, prefix), baselines=baselines, additional_forward_args=(mask,), n_steps=ig["steps"],
            method=ig["method"], return_convergence_delta=True) for i in case["positions"]]
        out[f"ig{k}.source"] = torch.cat([p[0][0] for p in parts])
        out[f"ig{k}.prefix"] = torch.cat([p[0][1] for p in parts])
        out[f"ig{k}.delta"] = torch.cat([p[1] for p in parts]).float()
    if case.get("contrast"):
        c = case["contrast"]
        f = logprob_of(model, target, c["position"], c["alternative"])
        s, p = InputXGradient(f).attribute((source, prefix), additional_forward_args=(mask,))
        out["contrast.source"], out["contrast.prefix"] = s[0], p[0]


def inseq_case(model, case, out):
    import inseq

    tokenizer = transformers.T5Tokenizer.from_pretrained(case["dir"])
    attribution_model = inseq.load_model(model, "value_zeroing", tokenizer=tokenizer)
    result = attribution_model.attribute(case["inseq"]["source"], case["inseq"]["target"], attribute_target=True,
                                         show_progress=False)
    seq = result.sequence_attributions[0]
    out["vz.source"] = seq.source_attributions.float().contiguous()
    out["vz.prefix"] = seq.target_attributions.float().contiguous()
    out["vz.source_ids"] = torch.tensor([t.id for t in seq.source])
    out["vz.target_ids"] = torch.tensor([t.id for t in seq.target])


def main():
    # Tiny models: one thread is faster, and two threads on a shared 2-core machine wait on each other (~8x slower).
    torch.set_num_threads(1)
    jobs = json.load(open(sys.argv[1]))
    for case in jobs["cases"]:
        model = CLASSES[case["family"]].from_pretrained(case["dir"], attn_implementation="eager").eval()
        out = {}
        captum_case(model, case, out)
        if case.get("inseq"):
            inseq_case(model, case, out)
        save_file({k: v.detach().contiguous() for k, v in out.items()}, case["out"])


if __name__ == "__main__":
    main()
