"""Reference side of tests/test_training.py; runs in .venv-ref with transformers 4.57.x and peft 0.22.

    ref_training.py JOBS.json OUT.json

JOBS.json holds any of:
- "steps": [{"name", "cls", "dir", "batch", "settings", "steps", "adapter", "adapter_out", "out"}]
    Loads `<cls>` (e.g. "MT5ForConditionalGeneration") from `dir` (a checkpoint we saved), with the peft LoRA
    adapter at `adapter` when given (PeftModel.from_pretrained, is_trainable=True). Builds the optimizer and
    schedule with transformers' own Trainer (TrainingArguments from `settings`, optim "adamw_torch",
    lr_scheduler_type "linear": Trainer.create_optimizer_and_scheduler), then runs `steps` steps as Trainer's
    training_step does for one batch: forward with labels, backward, clip_grad_norm_, optimizer and scheduler
    step. Writes to `out` (safetensors), per step s: `loss.s`, `norm.s`, `lr.s`, `grad.s.<name>` (before
    clipping), `clipped.s.<name>`, `param.s.<name>` (after the step), names in our (Hub) spelling. With an
    adapter: saves it after the steps to `adapter_out` (peft's save_pretrained), and `merged_logits` of the
    batch from merge_and_unload(). OUT.json[name]: the decayed parameter names (Trainer.get_decay_parameter_names).
- "check": [{"name", "cls", "dir", "batch", "out"}]: load a checkpoint we saved, write its logits on the batch.
"""
import json
import sys
import tempfile
import warnings

import torch
import transformers
from safetensors.torch import load_file, save_file

assert transformers.__version__.startswith("4.57"), transformers.__version__
warnings.filterwarnings("ignore", category=FutureWarning)   # peft 0.22 on transformers < 5.6

import peft  # noqa: E402


def ours(name: str) -> str:
    """peft's parameter name -> ours (the Hub's)."""
    name = name.removeprefix("base_model.model.").replace(".default.", ".")
    return name.replace(".modules_to_save.", ".")


def load(case):
    model = getattr(transformers, case["cls"]).from_pretrained(case["dir"], attn_implementation="eager")
    if case.get("adapter"):
        model = peft.PeftModel.from_pretrained(model, case["adapter"], is_trainable=True)
    return model


def steps(case, tmp):
    s = case["settings"]
    model = load(case)
    args = transformers.TrainingArguments(
        output_dir=tmp, learning_rate=s["learning_rate"], weight_decay=s["weight_decay"],
        adam_beta1=s["adam_beta1"], adam_beta2=s["adam_beta2"], adam_epsilon=s["adam_epsilon"],
        max_grad_norm=s["max_grad_norm"], warmup_steps=s["warmup_steps"], lr_scheduler_type="linear",
        optim="adamw_torch", use_cpu=True, report_to=[], seed=0)
    trainer = transformers.Trainer(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=case["total_steps"])
    optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
    batch = load_file(case["batch"])
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {}
    model.train()
    for step in range(case["steps"]):
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        loss = model(**batch).loss
        loss.backward()
        out.update({f"grad.{step}.{ours(n)}": p.grad.clone() for n, p in trainable if p.grad is not None})
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s["max_grad_norm"])
        out.update({f"clipped.{step}.{ours(n)}": p.grad.clone() for n, p in trainable if p.grad is not None})
        optimizer.step()
        scheduler.step()
        out.update({f"loss.{step}": loss.detach().clone(), f"norm.{step}": norm.detach().clone(),
                    f"lr.{step}": torch.tensor(lr, dtype=torch.float64)})
        out.update({f"param.{step}.{ours(n)}": p.detach().clone() for n, p in trainable})
    decayed = [ours(n) for n in trainer.get_decay_parameter_names(model)]
    if case.get("adapter"):
        model.save_pretrained(case["adapter_out"])
        merged = model.merge_and_unload().eval()
        with torch.no_grad():
            out["merged_logits"] = merged(**{k: v for k, v in batch.items()}).logits.clone()
    save_file({k: v.contiguous() for k, v in out.items()}, case["out"])
    return {"decayed": decayed, "trainable": [ours(n) for n, _ in trainable]}


def check(case):
    model = load(case).eval()
    batch = load_file(case["batch"])
    with torch.no_grad():
        logits = model(**batch).logits
    save_file({"logits": logits.contiguous()}, case["out"])


def main():
    jobs = json.load(open(sys.argv[1]))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in jobs.get("steps", []):
            torch.manual_seed(0)
            out[case["name"]] = steps(case, tmp)
    for case in jobs.get("check", []):
        check(case)
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
