"""Set-up from nothing: what a fresh machine or a Hugging Face Space gets from the repository alone.

A Space installs `requirements.txt` and nothing else, so every package the app imports must be listed there: a
package installed by hand on the test machine (protobuf once) must not be able to hide a missing line.
"""
import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = {"bitsandbytes",   # the nf4/fp4 path, imported only when asked for (docs/model.md: pip install bitsandbytes)
            "spaces"}        # ZeroGPU Spaces install it themselves; app/gpu.py wraps handlers only when present


def requirement_names(path: Path = ROOT / "requirements.txt") -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(canonical(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]))
    return names


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_files() -> list[Path]:
    return [ROOT / "app.py", *sorted((ROOT / "app").rglob("*.py")), *sorted((ROOT / "model").rglob("*.py"))]


def imported_top_names(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file, function-local ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def distributions_of(top_names: set[str]) -> dict[str, set[str]]:
    """Third-party top-level module name -> the distributions that provide it (stdlib and our packages left out)."""
    providers = md.packages_distributions()
    out = {}
    for name in top_names - set(sys.stdlib_module_names) - {"app", "model", "__future__"}:
        out[name] = {canonical(d) for d in providers.get(name, [name])}
    return out


def requirement_extras(path: Path = ROOT / "requirements.txt") -> dict[str, set[str]]:
    """Distribution -> the extras requirements.txt asks of it (`psycopg[binary]` -> {"binary"})."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\[([^\]]*)\]", line.split("#")[0])
        if m:
            out[canonical(m.group(1))] = {e.strip() for e in m.group(2).split(",")}
    return out


def required_closure(names: set[str], extras: dict[str, set[str]] | None = None) -> set[str]:
    """The listed distributions and everything they require, transitively; of the extras, only those listed."""
    extras = extras or {}
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", r)
            if extra is None or extra.group(1) in extras.get(name, ()):
                todo.append(canonical(re.split(r"[<>=!~;\[ (]", r, maxsplit=1)[0]))
    return seen


def test_requirements_list_every_package_the_code_imports():
    listed = requirement_names()
    missing = {}
    for path in project_files():
        for module, dists in distributions_of(imported_top_names(path)).items():
            if not dists & (listed | OPTIONAL):
                missing.setdefault(module, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"imported but not in requirements.txt: {missing}"


def test_every_module_loaded_at_run_time_is_installed_by_requirements():
    """Imports the whole app and model layer, then checks that each third-party module it loaded (indirect ones
    too: sentencepiece's model proto loads google.protobuf without declaring it) comes from a distribution that
    requirements.txt lists or that a listed one requires."""
    code = ("import json, sys, app.main, app.tasks, model, model.tiny, model.tokenizer, model.__main__; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                       check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout)
    covered = required_closure(requirement_names(), requirement_extras())
    uncovered = {m: sorted(d) for m, d in distributions_of(set(loaded) - {"_distutils_hack"}).items()
                 if not m.startswith("_") and not d & (covered | OPTIONAL) and any(_installed(x) for x in d)}
    assert not uncovered, f"loaded at run time but installed by nothing in requirements.txt: {uncovered}"


def _installed(dist: str) -> bool:
    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False


def test_reference_tests_skip_with_one_reason_and_fail_in_ci(tmp_path):
    """Without .venv-ref, `pytest` skips the reference tests saying how to build it; with CI set they fail."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["MT5_REF_PYTHON"] = str(tmp_path / "no-such-venv" / "bin" / "python")
    target = ["tests/test_parity.py", "-k", "parameter_counts or every_format", "-p", "no:cacheprovider"]
    local = subprocess.run([sys.executable, "-m", "pytest", "-rs", *target], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    assert local.returncode == 0, local.stdout[-3000:]
    assert re.search(r"2 skipped", local.stdout), local.stdout[-3000:]
    assert "reference venv" in local.stdout and "bash .ci/setup-reference" in local.stdout
    ci = subprocess.run([sys.executable, "-m", "pytest", *target], cwd=ROOT, env={**env, "CI": "1"},
                        capture_output=True, text=True)
    assert ci.returncode == 1 and "is missing: run `bash .ci/setup-reference`" in ci.stdout, ci.stdout[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def repo_copy(dest: Path) -> Path:
    """The files a Space gets: what git tracks (and new files not ignored), nothing built or installed here."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
def test_a_space_built_from_requirements_alone_starts_offline(tmp_path):
    """requirements.txt alone, in a fresh venv without system site-packages, starts `python app.py` offline
    (demo mode) and serves the page. torch is held at this machine's local CPU wheel by a constraint (a Space
    takes PyPI's build): an unconstrained resolve here would download GBs of CUDA packages."""
    repo = repo_copy(tmp_path / "space")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    (tmp_path / "torch.txt").write_text("torch==2.13.0\n")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           # the machine's wheel cache (what .ci/setup fetched minutes before): the same files, not fetched twice
           "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))}
    # --no-compile: no bytecode for torch's thousands of modules, which starting the app does not need
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "--no-compile", "-c", str(tmp_path / "torch.txt"),
                          "-r", "requirements.txt"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    for cmd in ([py, "app.py", "--help"], [py, "-m", "model", "--help"]):
        run = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "usage:" in run.stdout, run.stderr[-3000:]
    port = free_port()
    log = open(tmp_path / "app.log", "w")
    app = subprocess.Popen([py, "app.py", "--port", str(port)], cwd=repo, env=env, stdout=log,
                           stderr=subprocess.STDOUT)
    try:
        config = wait_for_page(f"http://127.0.0.1:{port}", app, tmp_path / "app.log")
        assert "demo-banner" in config  # offline and nothing cached: demo mode, with its banner
        assert str(repo) not in config and str(tmp_path) not in config  # no server path in the page
    finally:
        app.terminate()
        app.wait(timeout=30)


def wait_for_page(url: str, process: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url + "/", timeout=5) as page:
                assert page.status == 200 and "mT5 Studio" in page.read().decode()
            with urllib.request.urlopen(url + "/config", timeout=5) as config:
                return config.read().decode()
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"app.py served no page within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
