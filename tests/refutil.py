"""Runs the numeric reference (transformers 4.57.x) in its own venv, `.venv-ref`.

transformers 4.57 needs huggingface_hub < 1.0 and the app needs >= 1.16, so the reference cannot be imported
here: each reference script under `tests/reference/` runs in a subprocess of the reference interpreter and
exchanges tensors through files. `bash .ci/setup-reference` builds the venv.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REF_PYTHON = Path(os.environ.get("MT5_REF_PYTHON", ROOT / ".venv-ref" / "bin" / "python"))


def run_reference(script: str, *args: str, timeout: float = 300) -> str:
    """Runs `tests/reference/<script>` under the reference interpreter; returns its stdout."""
    if not REF_PYTHON.exists():
        pytest.fail(f"reference interpreter {REF_PYTHON} is missing: run `bash .ci/setup-reference`", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [str(REF_PYTHON), str(ROOT / "tests" / "reference" / script), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"reference script {script} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout
