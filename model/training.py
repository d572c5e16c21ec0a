"""Fine-tuning the model layer's networks: seq2seq, classification heads, LoRA; checkpoints that resume.

What the libraries do and what is ours:
- `accelerate` places the model and batches (CPU, one or several GPUs), wraps the model for several processes
  (`accelerate launch`), runs mixed precision (bf16 autocast, fp16 with a loss scaler) and clips gradients.
  Gradient accumulation is done here, with accelerate's `no_sync` on all but the last micro-batch of an
  optimizer step, so a short last group is averaged by its own size.
- Optimizers are torch's: `torch.optim.AdamW`, or `torch.optim.Adafactor` (torch's own, the paper's algorithm
  with torch's defaults; it is *not* numerically transformers' `Adafactor` class). Weight decay skips biases
  (which includes `relative_attention_bias`) and norms, by transformers Trainer's name patterns. The schedule is
  transformers' linear decay with warmup (or constant), as a LambdaLR.
- LoRA is our own `LoRALinear`, not `peft`: `import peft` imports `transformers` (peft requires it and its
  `__init__` imports its transformers-based auto classes), and the model layer never runs transformers. The
  numerics are peft's LoRA `Linear` (`base(x) + lora_B(lora_A(dropout(x))) * alpha / r`, A kaiming-uniform,
  B zero, `target_modules` matched on the module name's end as peft does), and `save_adapter` writes peft's
  files (adapter_config.json, adapter_model.safetensors with `base_model.model.<module>.lora_A.weight` keys), so
  `PeftModel.from_pretrained` loads them; `save_trained` also writes a merged copy that our loader and
  transformers load as a plain checkpoint.
- On the CPU each step runs in a worker thread that flushes denormal floats to zero (`flushing_thread`):
  with an underflowing softmax over 250k logits they made a LoRA step at mt0-small's shape ~7x slower.
- Gradient checkpointing recomputes each block in the backward pass (`torch.utils.checkpoint`, non-reentrant):
  each `Block` instance's forward is wrapped, as accelerate's hooks wrap a module's forward; the network is
  unchanged.

Batches are length-grouped (transformers' LengthGroupedSampler: random megabatches of 50 batches, sorted by
length inside, the longest batch first so an out-of-memory error shows at step 1). A checkpoint holds the
trainable weights, the optimizer's and scheduler's state, the RNG states and `trainer_state.json`; it is written
to a temporary folder and renamed, so a stop while saving leaves the last complete checkpoint as it was.

Features are dicts: `input_ids` (list of ids, `</s>` included) and `labels` (target ids for seq2seq, one class
index for sequence classification, one label per input token, -100 where ignored, for token classification).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from .modeling import Block

IGNORE = -100   # label id the losses skip (transformers' convention)


# ------------------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------------------
@dataclass
class LoraSettings:
    """LoRA on the Linear layers whose names end with one of `target_modules` (peft's matching)."""
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q", "v")
    modules_to_save: tuple[str, ...] = ()   # trained in full beside the adapters (a new classification head)

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        self.modules_to_save = tuple(self.modules_to_save)
        if self.r < 1 or not self.target_modules:
            raise ValueError(f"LoRA needs r >= 1 and at least one target module, got r={self.r}, "
                             f"target_modules={self.target_modules}")


@dataclass
class TrainSettings:
    """One training run. Run length: `max_steps` optimizer steps if set, else `epochs` over the data;
    `max_seconds` stops early (resumable) without changing the schedule."""
    learning_rate: float = 3e-4
    optimizer: str = "adamw"              # "adamw" (torch.optim.AdamW) or "adafactor" (torch.optim.Adafactor)
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    schedule: str = "linear"              # "linear" (decay to 0 after warmup) or "constant" (after warmup)
    warmup_steps: int = 0
    batch_size: int = 8                   # per process
    gradient_accumulation_steps: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    max_seconds: float | None = None
    mixed_precision: str = "no"           # "no", "bf16" or "fp16" (accelerate)
    gradient_checkpointing: bool = False
    flush_denormal: bool = True           # on the CPU, steps run in a thread that flushes denormals to zero
    group_by_length: bool = True
    seed: int = 0
    save_every: int | None = None         # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2
    lora: LoraSettings | None = None

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        checks = {"optimizer": self.optimizer in ("adamw", "adafactor"),
                  "schedule": self.schedule in ("linear", "constant"),
                  "mixed_precision": self.mixed_precision in ("no", "bf16", "fp16"),
                  "batch_size": self.batch_size >= 1,
                  "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
                  "learning_rate": self.learning_rate > 0, "epochs": self.epochs > 0,
                  "max_steps": self.max_steps is None or self.max_steps >= 1,
                  "keep_checkpoints": self.keep_checkpoints >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training setting(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def plan_dict(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run that wrote the checkpoint (all but the time limit
        and how often to save)."""
        return {k: v for k, v in self.to_dict().items()
                if k not in ("max_seconds", "save_every", "keep_checkpoints", "flush_denormal")}


# ------------------------------------------------------------------------------------------------------------
# Features and batches
# ------------------------------------------------------------------------------------------------------------
def fit(ids: list[int], limit: int, eos: int) -> list[int]:
    """Truncates to `limit` ids, keeping a final `</s>` at the end."""
    if len(ids) <= limit:
        return list(ids)
    return list(ids[:limit - 1]) + [eos] if ids and ids[-1] == eos else list(ids[:limit])


def seq2seq_features(tokenizer, sources: Sequence[str], targets: Sequence[str], max_source_tokens: int = 512,
                     max_target_tokens: int = 128) -> list[dict]:
    """Inputs -> target texts (corrections), both with `</s>`."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} inputs but {len(targets)} targets: give one target per input")
    eos = tokenizer.eos_token_id
    return [{"input_ids": fit(tokenizer.encode(s), max_source_tokens, eos),
             "labels": fit(tokenizer.encode(t), max_target_tokens, eos)} for s, t in zip(sources, targets)]


def rank_classification_features(tokenizer, prompts: Sequence[str], answers: Sequence[str],
                                 max_source_tokens: int = 512, max_target_tokens: int = 32) -> list[dict]:
    """Prompts -> the chosen label's text, tokenized as rank classification scores choices (model.ranking):
    the prompt without its closing `</s>`, the answer with it."""
    eos = tokenizer.eos_token_id
    return [{"input_ids": tokenizer.encode(p, add_special_tokens=False)[:max_source_tokens],
             "labels": fit(tokenizer.encode(a), max_target_tokens, eos)} for p, a in zip(prompts, answers)]


def classification_features(tokenizer, texts: Sequence[str], labels: Sequence[int],
                            max_tokens: int = 512) -> list[dict]:
    """Texts -> class indices, for ...ForSequenceClassification (every row keeps its final `</s>`)."""
    eos = tokenizer.eos_token_id
    return [{"input_ids": fit(tokenizer.encode(t), max_tokens, eos), "labels": int(y)} for t, y in zip(texts, labels)]


def token_classification_features(tokenizer, words: Sequence[Sequence[str]], tags: Sequence[Sequence[int]],
                                  max_tokens: int = 512) -> list[dict]:
    """Words with one tag index each -> ids and per-token labels, as transformers' `is_split_into_words`: a
    word's first piece carries its tag, its other pieces and the final `</s>` carry -100 (ignored)."""
    rows = []
    for ws, ts in zip(words, tags):
        if len(ws) != len(ts):
            raise ValueError(f"{len(ws)} words but {len(ts)} tags in {' '.join(ws)[:60]!r}: one tag per word")
        ids, labels = [], []
        for w, t in zip(ws, ts):
            pieces = tokenizer.encode(w, add_special_tokens=False)
            ids += pieces
            labels += [int(t)] + [IGNORE] * (len(pieces) - 1)
        ids, labels = ids[:max_tokens - 1] + [tokenizer.eos_token_id], labels[:max_tokens - 1] + [IGNORE]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """N lists -> (N, T) right-padded with `value`."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Features -> a batch: input_ids and attention_mask (B, S); labels (B, T) padded with -100, or (B,)."""
    ids = pad([f["input_ids"] for f in features], pad_id)
    batch = {"input_ids": ids, "attention_mask": pad([[1] * len(f["input_ids"]) for f in features], 0)}
    labels = [f["labels"] for f in features]
    if isinstance(labels[0], (list, tuple)):
        batch["labels"] = pad(labels, IGNORE)
    else:
        batch["labels"] = torch.tensor(labels)
    return batch


def feature_length(f: dict) -> int:
    labels = f["labels"]
    return len(f["input_ids"]) + (len(labels) if isinstance(labels, (list, tuple)) else 0)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, group: bool = True,
                           megabatch: int = 50) -> list[list[int]]:
    """Row indices in batches: a seeded shuffle; with `group`, megabatches of `megabatch` batches each sorted
    longest first (transformers' get_length_grouped_indices), and the batch with the longest row moved first."""
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    if group:
        size = max(1, min(len(lengths) // (batch_size * 4), megabatch)) * batch_size
        order = [i for start in range(0, len(order), size)
                 for i in sorted(order[start:start + size], key=lambda i: -lengths[i])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group and batches:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(longest))
    return batches


def data_hash(features: Sequence[dict]) -> str:
    """sha256 of the features (ids and labels): a resumed run must train on the same data."""
    digest = hashlib.sha256()
    for f in features:
        digest.update(json.dumps([f["input_ids"], f["labels"]]).encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------------------
class LoRALinear(nn.Linear):
    """An nn.Linear (the same `weight`, so state-dict keys stay the Hub's) plus a low-rank update:
    y = x W^T + lora_B(lora_A(dropout(x))) * alpha / r, as peft's LoRA Linear. Adapters are fp32 when the base is
    fp16/bf16 (peft's autocast_adapter_dtype). `merge()` adds B A * scaling into W, `unmerge()` subtracts it."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        nn.Module.__init__(self)   # not nn.Linear's: it would allocate a second weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        dtype = base.weight.dtype if base.weight.dtype == torch.float32 else torch.float32
        device = base.weight.device
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device, dtype=dtype)
        nn.init.zeros_(self.lora_B.weight)   # lora_A keeps nn.Linear's kaiming-uniform init, as peft's
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scaling = alpha / r
        self.merged = False

    def delta(self) -> torch.Tensor:
        """(out, in): the update merging adds to the weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, self.weight, self.bias)
        if self.merged:
            return result
        a = self.lora_A.weight
        return (result + self.lora_B(self.lora_A(self.lora_dropout(x.to(a.dtype)))) * self.scaling).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta().to(self.weight.dtype)
            self.merged = False

    def merged_linear(self) -> nn.Linear:
        """A plain nn.Linear with W + B A * scaling (this module is left as it is)."""
        weight = self.weight if self.merged else self.weight + self.delta().to(self.weight.dtype)
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        out.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        if self.bias is not None:
            out.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return out


def targeted(name: str, targets: Iterable[str]) -> bool:
    """peft's rule for a list of target_modules: the module's name is one of them or ends with `.` + one."""
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Wraps every targeted nn.Linear in a LoRALinear; freezes everything but the adapters and
    `modules_to_save` (by default the model's classification head, if it has one). Returns the wrapped modules'
    names."""
    if lora_modules(model):
        raise ValueError("the model already has LoRA adapters: merge or remove them first")
    if not settings.modules_to_save:   # a task head is new and small: trained in full, as peft does for SEQ_CLS
        heads = tuple(h for h in ("classification_head", "classifier") if hasattr(model, h))
        settings = dataclasses.replace(settings, modules_to_save=heads)
    wrapped = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and targeted(name, settings.target_modules):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, LoRALinear(module, settings.r, settings.alpha, settings.dropout))
            wrapped.append(name)
    if not wrapped:
        linear = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if type(m) is nn.Linear})
        raise ValueError(f"no Linear layer matches target_modules {list(settings.target_modules)}: this model's "
                         f"Linear layers are named {linear}")
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name or targeted_prefix(name, settings.modules_to_save)
    model.lora_settings = settings
    return wrapped


def targeted_prefix(param: str, modules: Iterable[str]) -> bool:
    return any(param.startswith(m + ".") or f".{m}." in param for m in modules)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    """Adds each adapter into its weight (forward then skips the adapters); `unmerge_lora` undoes it."""
    for m in lora_modules(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.unmerge()


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter in peft's key names: `base_model.model.<module>.lora_A.weight`, ... and the modules_to_save."""
    settings = getattr(model, "lora_settings", None)
    saved = settings.modules_to_save if settings else ()
    return {f"base_model.model.{name}": p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if ".lora_" in name or targeted_prefix(name, saved)}


def save_adapter(model: nn.Module, directory: str | os.PathLike, base_model_name_or_path: str | None = None) -> None:
    """Writes adapter_config.json + adapter_model.safetensors as peft saves a LoRA adapter."""
    settings = getattr(model, "lora_settings", None)
    if settings is None:
        raise ValueError("the model has no LoRA adapters to save (add_lora first)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    task = "SEQ_2_SEQ_LM" if hasattr(model, "lm_head") else (
        "SEQ_CLS" if hasattr(model, "classification_head") else "TOKEN_CLS" if hasattr(model, "classifier") else None)
    config = {
        "peft_type": "LORA", "task_type": task, "base_model_name_or_path": base_model_name_or_path,
        "r": settings.r, "lora_alpha": settings.alpha, "lora_dropout": settings.dropout,
        "target_modules": sorted(settings.target_modules), "modules_to_save": list(settings.modules_to_save) or None,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "use_rslora": False, "use_dora": False, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(adapter_state(model), directory / "adapter_model.safetensors", metadata={"format": "pt"})


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> list[str]:
    """Adds the LoRA adapter of a peft folder (ours or peft's) to `model`; returns the wrapped modules' names."""
    directory = Path(directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("use_rslora") \
            or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{directory} is not a plain LoRA adapter (peft_type {config.get('peft_type')!r}; "
                         "DoRA, rsLoRA and per-layer ranks are not supported)")
    targets = config["target_modules"]
    settings = LoraSettings(r=config["r"], alpha=config["lora_alpha"], dropout=config.get("lora_dropout", 0.0),
                            target_modules=[targets] if isinstance(targets, str) else targets,
                            modules_to_save=config.get("modules_to_save") or ())
    wrapped = add_lora(model, settings)
    tensors = load_file(directory / "adapter_model.safetensors")
    params = dict(model.named_parameters())
    wanted = set(adapter_state(model))
    missing = sorted(wanted - set(tensors))
    unknown = sorted(set(tensors) - wanted)
    if missing or unknown:
        raise ValueError(f"{directory}: adapter weights do not fit this model: missing {missing[:6]}, "
                         f"unexpected {unknown[:6]}")
    with torch.no_grad():
        for key, tensor in tensors.items():
            params[key.removeprefix("base_model.model.")].copy_(tensor)
    return wrapped


def without_lora(model: nn.Module) -> dict[str, tuple[nn.Module, LoRALinear]]:
    """Swaps every LoRALinear for its merged nn.Linear; returns what `restore_lora` needs to swap them back."""
    swapped = {}
    for name, module in lora_modules(model).items():
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, leaf, module.merged_linear())
        swapped[name] = (owner, module)
    return swapped


def restore_lora(swapped: dict[str, tuple[nn.Module, LoRALinear]]) -> None:
    for name, (owner, module) in swapped.items():
        setattr(owner, name.rpartition(".")[2], module)


def save_trained(model: nn.Module, directory: str | os.PathLike, tokenizer=None,
                 base_model_name_or_path: str | None = None) -> dict[str, Path]:
    """The result in the Hub's format: a full checkpoint in `directory`, or with LoRA the adapter in
    `directory/adapter` and the merged model (a plain checkpoint) in `directory/merged`. The model is unchanged.
    Returns {"model": folder to load, "adapter": folder (LoRA only)}."""
    directory = Path(directory)
    model = getattr(model, "module", model)   # unwrap DistributedDataParallel
    if not lora_modules(model):
        model.save_pretrained(directory)
        out = {"model": directory}
    else:
        save_adapter(model, directory / "adapter", base_model_name_or_path)
        swapped = without_lora(model)
        try:
            model.save_pretrained(directory / "merged")
        finally:
            restore_lora(swapped)
        out = {"model": directory / "merged", "adapter": directory / "adapter"}
    if tokenizer is not None:
        for folder in out.values():
            tokenizer.save_pretrained(folder)
    return out


# ------------------------------------------------------------------------------------------------------------
# Gradient checkpointing
# ------------------------------------------------------------------------------------------------------------
def checkpointed_forward(block: Block, h, bias, ctx, index):
    if block.training and torch.is_grad_enabled():
        return checkpoint(Block.forward, block, h, bias, ctx, index, use_reentrant=False)
    return Block.forward(block, h, bias, ctx, index)


def set_gradient_checkpointing(model: nn.Module, enable: bool = True) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (less memory, ~1/3
    more compute). Training only: evaluation and generation run the plain forward."""
    for module in model.modules():
        if isinstance(module, Block):
            if enable:
                module.forward = partial(checkpointed_forward, module)
            else:
                module.__dict__.pop("forward", None)


# ------------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ------------------------------------------------------------------------------------------------------------
# transformers Trainer's get_decay_parameter_names patterns (lower-cased names): no decay for biases and norms.
NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups, decayed and not, in named_parameters order (as transformers)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    decay = [p for n, p in named if not NO_DECAY.search(n.lower())]
    rest = [p for n, p in named if NO_DECAY.search(n.lower())]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    groups = parameter_groups(model, settings.weight_decay)
    if settings.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=settings.learning_rate)
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(settings.adam_beta1, settings.adam_beta2),
                             eps=settings.adam_epsilon)


def schedule_factor(step: int, warmup: int, total: int, linear: bool) -> float:
    """transformers' get_linear_schedule_with_warmup / get_constant_schedule_with_warmup factor at `step`."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if not linear:
        return 1.0
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        schedule_factor, warmup=settings.warmup_steps, total=total_steps, linear=settings.schedule == "linear"))


# ------------------------------------------------------------------------------------------------------------
# One optimizer step
# ------------------------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    loss: float              # mean loss of the step's micro-batches (averaged over processes)
    grad_norm: float | None  # total gradient norm before clipping (None without clipping)
    learning_rate: float     # the rate this step used


class Trainer:
    """The model, its optimizer and schedule under accelerate; `step(batches)` runs one optimizer step.

    After a step the parameters' `.grad` still hold its (clipped) gradients; they are cleared at the start of
    the next step."""

    def __init__(self, model: nn.Module, settings: TrainSettings, total_steps: int,
                 accelerator: Accelerator | None = None):
        self.settings, self.total_steps = settings, total_steps
        self.accelerator = accelerator or make_accelerator(settings)
        if settings.gradient_checkpointing:
            set_gradient_checkpointing(model)
        model.train()
        optimizer = make_optimizer(model, settings)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # Stepped here once per optimizer step (not prepared: accelerate would step it once per process).
        self.scheduler = make_scheduler(self.optimizer, settings, total_steps)
        self.step_count = 0
        cpu = self.accelerator.device.type == "cpu"
        self.worker = flushing_thread() if settings.flush_denormal and cpu else None

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.unwrapped.named_parameters() if p.requires_grad}

    def step(self, batches: Sequence[dict[str, torch.Tensor]]) -> StepResult:
        """Forward and backward over the micro-batches (gradients averaged over them and over processes),
        clipping, one optimizer and schedule step (on the CPU in the flushing thread: see `flushing_thread`)."""
        if self.worker is None:
            return self.run_step(batches)
        return self.worker.submit(self.run_step, batches).result()

    def close(self) -> None:
        """Ends the worker thread (also done when the Trainer is garbage-collected)."""
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None

    def run_step(self, batches: Sequence[dict[str, torch.Tensor]]) -> StepResult:
        acc = self.accelerator
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        total = torch.zeros((), device=acc.device)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with nullcontext() if last else acc.no_sync(self.model):
                loss = self.model(**{k: v.to(acc.device) for k, v in batch.items()}).loss
                acc.backward(loss / len(batches))
            total += loss.detach().float() / len(batches)
        norm = None
        if self.settings.max_grad_norm is not None:
            norm = float(acc.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        return StepResult(float(acc.reduce(total, "mean")), norm, lr)


def flushing_thread() -> ThreadPoolExecutor:
    """A worker thread whose CPU math flushes denormal floats (below 1.2e-38) to zero.

    A softmax over 250k logits that underflows (random weights, a confident model) fills the output
    projection's backward and AdamW's second moments with denormals, which x86 CPUs compute ~30-100x slower:
    11 s instead of 0.33 s for the one output-projection matmul of an mt0-small-shaped LoRA step, batch 8.
    torch.set_flush_denormal sets only the calling thread, and OpenMP's workers copy it when they are created:
    the process's own thread team exists long before training, but a new thread that sets it first gets a team
    of its own that flushes too. So steps run in this thread, and nothing outside training changes."""
    threads = torch.get_num_threads()

    def start() -> None:
        torch.set_flush_denormal(True)
        torch.set_num_threads(threads)   # a per-thread OpenMP setting: the caller's, not the default

    return ThreadPoolExecutor(max_workers=1, initializer=start, thread_name_prefix="train-step")


def make_accelerator(settings: TrainSettings) -> Accelerator:
    """accelerate's Accelerator for these settings: GPUs when there are, else CPU processes (gloo)."""
    try:
        return Accelerator(mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available())
    except ValueError as e:
        if "already been initialized" not in str(e):
            raise
        raise ValueError(f"mixed_precision={settings.mixed_precision!r}: this process already trains with another "
                         "setting, and accelerate keeps one per process; run each training in its own process "
                         "(python -m app train)") from e


# ------------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------------
CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "trainer_state.json"


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (a folder without trainer_state.json is not one)."""
    found = [p for p in Path(output_dir).glob(CHECKPOINT_PREFIX + "*")
             if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(trainer: Trainer, output_dir: str | os.PathLike, state: dict[str, Any]) -> Path | None:
    """Writes checkpoint-<step> (main process; every process waits): trainable weights, optimizer, scheduler,
    RNG states, and trainer_state.json; into a .tmp folder renamed when complete. Older ones beyond
    `keep_checkpoints` are removed."""
    acc = trainer.accelerator
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    rngs = gather_object([rng]) if acc.num_processes > 1 else [rng]   # one per process, in rank order
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{trainer.step_count:07d}"
    if acc.is_main_process:
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({n: p.detach().cpu().contiguous() for n, p in trainer.trainable().items()},
                  tmp / "trainable.safetensors", metadata={"format": "pt"})
        torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(trainer.scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rngs, tmp / "rng.pt")
        (tmp / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(output_dir)[:-trainer.settings.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_checkpoint(trainer: Trainer, directory: Path) -> dict[str, Any]:
    """Restores a checkpoint into `trainer`; returns its trainer_state."""
    state = json.loads((directory / STATE_NAME).read_text())
    params = trainer.trainable()
    saved = load_file(directory / "trainable.safetensors")
    if set(saved) != set(params):
        raise ValueError(f"{directory} holds other trainable weights than this run's (for example "
                         f"{sorted(set(saved) ^ set(params))[:4]}): resume with the same model and LoRA settings")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    trainer.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    trainer.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    rngs = torch.load(directory / "rng.pt", weights_only=True)
    rng = rngs[min(trainer.accelerator.process_index, len(rngs) - 1)]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    trainer.step_count = state["step"]
    return state


# ------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    elapsed: float           # seconds of training, this run and the runs it resumed
    remaining: float | None  # estimated seconds left


@dataclass
class TrainResult:
    steps: int                     # optimizer steps done in all (resumed runs included)
    total_steps: int
    finished: bool                 # all steps done (else stopped: by time, or by `should_stop`)
    stopped_by: str | None         # None, "time" or "request"
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    checkpoint: Path | None = None
    saved: dict[str, Path] = field(default_factory=dict)   # save_trained's folders, when finished


def plan(lengths: Sequence[int], settings: TrainSettings, processes: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for this many rows on this many processes."""
    per_process = math.ceil(len(lengths) / settings.batch_size) // processes
    if per_process == 0:
        raise ValueError(f"{len(lengths)} example(s) make no batch of {settings.batch_size} for each of "
                         f"{processes} process(es): add examples or lower batch_size")
    per_epoch = math.ceil(per_process / settings.gradient_accumulation_steps)
    total = settings.max_steps or math.ceil(per_epoch * settings.epochs)
    return per_epoch, total


def epoch_groups(lengths: Sequence[int], settings: TrainSettings, epoch: int, rank: int,
                 processes: int) -> list[list[list[int]]]:
    """This process's optimizer steps of one epoch: each a list of micro-batches of row indices. Every process
    computes the same batch order and takes every `processes`-th batch (the remainder is dropped, so all
    processes step together)."""
    batches = length_grouped_batches(lengths, settings.batch_size, settings.seed + epoch, settings.group_by_length)
    mine = batches[:len(batches) // processes * processes][rank::processes]
    n = settings.gradient_accumulation_steps
    return [mine[i:i + n] for i in range(0, len(mine), n)]


def train(model: nn.Module, features: Sequence[dict], settings: TrainSettings, output_dir: str | os.PathLike, *,
          resume: bool = True, progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None, tokenizer=None, about: dict | None = None,
          accelerator: Accelerator | None = None) -> TrainResult:
    """Trains `model` in place on `features`; checkpoints under `output_dir`, the result (finished runs) in
    `output_dir/final` (see save_trained). With `resume`, continues from the last complete checkpoint there
    (same settings and data, else ValueError; `model` must be the same starting model: a checkpoint holds only
    the trainable weights, so with LoRA the frozen base comes from `model`). `about` (the caller's notes: data
    source, model name) is stored in trainer_state.json. `should_stop()` is asked between steps; a stop saves a
    checkpoint first."""
    if len(features) == 0:
        raise ValueError("no training examples")
    base = getattr(model, "config", None)
    pad_id = base.pad_token_id if base is not None else 0
    if settings.lora is not None and not lora_modules(model):
        add_lora(model, settings.lora)
    set_seed(settings.seed)
    lengths = [feature_length(f) for f in features]
    accelerator = accelerator or make_accelerator(settings)
    per_epoch, total = plan(lengths, settings, accelerator.num_processes)
    trainer = Trainer(model, settings, total, accelerator)
    identity = json.loads(json.dumps(   # as trainer_state.json holds it (tuples become lists)
        {"settings": settings.plan_dict(), "data_hash": data_hash(features), "examples": len(features)}))
    state = {"step": 0, "elapsed": 0.0, "losses": [], "total_steps": total, **identity, "about": about or {}}
    found = checkpoints(output_dir) if resume else []
    if found:
        saved = json.loads((found[-1] / STATE_NAME).read_text())
        differs = [k for k in identity if saved.get(k) != identity[k]]
        if differs:
            raise ValueError(f"{found[-1]} was written with other {' and '.join(differs)}: resume with the same "
                             f"settings and data, or give another output folder")
        load_checkpoint(trainer, found[-1])
        state.update(step=saved["step"], elapsed=saved["elapsed"], losses=saved["losses"])
    try:
        result = run_steps(trainer, features, lengths, state, per_epoch, pad_id, output_dir, progress, should_stop)
    finally:
        trainer.close()
    if result.stopped_by or settings.save_every or result.finished:
        result.checkpoint = save_checkpoint(trainer, output_dir, state)
    if result.finished:
        if accelerator.is_main_process:
            result.saved = save_trained(trainer.unwrapped, Path(output_dir) / "final", tokenizer)
            (Path(output_dir) / "final" / "training.json").write_text(json.dumps(state, indent=2) + "\n")
        accelerator.wait_for_everyone()
    trainer.unwrapped.eval()
    return result


def run_steps(trainer: Trainer, features, lengths, state: dict, per_epoch: int, pad_id: int, output_dir,
              progress, should_stop) -> TrainResult:
    """The steps from state["step"] on; updates `state` (step, elapsed, losses) as it goes."""
    acc, total, settings = trainer.accelerator, trainer.total_steps, trainer.settings
    started, before = time.monotonic(), state["elapsed"]
    stopped_by = None
    done_at_start = state["step"]
    while state["step"] < total and stopped_by is None:
        epoch, offset = divmod(state["step"], per_epoch)
        groups = epoch_groups(lengths, settings, epoch, acc.process_index, acc.num_processes)
        for group in groups[offset:]:
            batches = [collate([features[i] for i in batch], pad_id) for batch in group]
            out = trainer.step(batches)
            state["step"] += 1
            state["losses"].append(out.loss)
            state["elapsed"] = before + time.monotonic() - started
            ran = state["step"] - done_at_start
            remaining = (time.monotonic() - started) / ran * (total - state["step"])
            if progress is not None and acc.is_main_process:
                progress(Progress(state["step"], total, epoch, out.loss, out.learning_rate, state["elapsed"],
                                  remaining))
            if settings.save_every and state["step"] % settings.save_every == 0 and state["step"] < total:
                save_checkpoint(trainer, output_dir, state)
            if state["step"] >= total:
                break
            if settings.max_seconds is not None and time.monotonic() - started >= settings.max_seconds:
                stopped_by = "time"
            elif should_stop is not None and stop_requested(acc, should_stop):
                stopped_by = "request"
            if stopped_by:
                break
    return TrainResult(state["step"], total, state["step"] >= total, stopped_by, list(state["losses"]),
                       state["elapsed"])


def stop_requested(acc: Accelerator, should_stop: Callable[[], bool]) -> bool:
    """The main process's answer, shared with every process so they stop at the same step."""
    if acc.num_processes == 1:
        return bool(should_stop())
    flag = torch.tensor([float(should_stop()) if acc.is_main_process else 0.0], device=acc.device)
    return bool(acc.reduce(flag, "sum").item())


@torch.no_grad()
def evaluate_loss(model: nn.Module, features: Sequence[dict], batch_size: int = 8) -> float:
    """Mean loss per batch over `features` (held-out data), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = model.config.pad_token_id
    losses = []
    for start in range(0, len(features), batch_size):
        batch = collate(features[start:start + batch_size], pad_id)
        losses.append(float(model(**{k: v.to(device) for k, v in batch.items()}).loss))
    model.train(was_training)
    return sum(losses) / len(losses)
