"""Reads `assets/`: examples, the default-model registry, CSS, JavaScript and help text."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_PREFIX = "demo/"   # the demo checkpoints' short names: "demo/generation", never the server's folder


@dataclass(frozen=True)
class TaskModels:
    """The registry entry of one task: which head it loads, its default checkpoint and suggestions."""
    head: str
    default: str
    suggestions: list[str] = field(default_factory=list)
    note: str = ""
    # what the default checkpoint is, shown in the model box: licence, size, languages, approach
    licence: str = ""
    size: str = ""
    languages: str = ""
    approach: str = ""
    # decoding settings for checkpoints that ship no length of their own (tasks.preset_decoding; mT0)
    decoding: dict | None = None
    # the default checkpoint's weights per quantization choice (a key of app.models.QUANTIZATIONS, or "bf16"),
    # and the quantization the model box starts with (a checkpoint too big for a Space in full precision)
    memory: dict[str, str] | None = None
    quantization: str = "none"

    def facts(self) -> str:
        """One line about the registry's default (the first suggestion that is not a demo checkpoint):
        "Default bigscience/mt0-base: Apache-2.0 · 580M parameters … · 46 languages (xP3) · …"."""
        memory = "weights " + ", ".join(f"{'fp32' if k == 'none' else k} {v}" for k, v in self.memory.items()) \
            if self.memory else ""
        given = [v for v in (self.licence, self.size, self.languages, self.approach, memory) if v]
        name = next((s for s in self.suggestions if not s.startswith(DEMO_PREFIX)), self.default)
        return f"Default {name}: {' · '.join(given)}." if given else ""


@dataclass
class Assets:
    examples: dict[str, list[dict]]
    models: dict[str, TaskModels]
    # task -> name of its demo checkpoint (see model.tiny.build_demo_checkpoints), or a list of names: the default
    # first, then more the task's model box offers (classification: text-to-text, then a classification head)
    demo_heads: dict[str, str | list[str]]
    css: str
    js: dict[str, str]              # file stem -> source
    help: dict[str, str]            # file stem -> markdown
    folders: dict[str, Path] = field(default_factory=dict)   # short name -> local checkpoint folder (the demo's)

    def example_texts(self) -> list[str]:
        """Every text of every example (the demo tokenizer is trained on these)."""
        out = []
        for rows in self.examples.values():
            for row in rows:
                out += [v for k, v in row.items() if k != "lang" and isinstance(v, str)]
        return out

    def with_demo_models(self, checkpoints: dict[str, Path]) -> "Assets":
        """A copy whose defaults are the demo checkpoints (the real ids stay as suggestions), named by short
        names ("demo/generation") that `folders` maps to their folders: the page, the status line and the
        annotations show the short name, never a path of the server."""
        folders = {DEMO_PREFIX + path.name: path for path in checkpoints.values()}
        models = {}
        for task, entry in self.models.items():
            heads = self.demo_heads[task]
            names = [DEMO_PREFIX + checkpoints[h].name for h in ([heads] if isinstance(heads, str) else heads)]
            models[task] = replace(entry, default=names[0], suggestions=[*names, *entry.suggestions],
                                   quantization="none")   # the tiny demo checkpoints need no quantization
        return replace(self, models=models, folders={**self.folders, **folders})


def load_assets(folder: Path = ASSETS) -> Assets:
    examples = json.loads((folder / "examples.json").read_text(encoding="utf-8"))
    registry = json.loads((folder / "models.json").read_text(encoding="utf-8"))
    models = {task: TaskModels(**entry) for task, entry in registry["tasks"].items()}
    return Assets(
        examples=examples, models=models, demo_heads=registry["demo"],
        css=(folder / "style.css").read_text(encoding="utf-8"),
        js={p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.js"))},
        help={p.stem: p.read_text(encoding="utf-8") for p in sorted((folder / "help").glob("*.md"))},
    )
