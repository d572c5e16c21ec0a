"""The house's rules, read from the code: no import circle in `model/` or `app/`, the network imports only its
config, the model layer never imports the app, and no project import hides inside a function."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "app")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported project module, inside a function?) for every import of `model.*` / `app.*` in a file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` names the submodule x, not the package (which Python imports first anyway)
            targets = ([target] if node.module else []) + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] in PACKAGES:
                found.append((t, id(node) in local))
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges = {}
    for name, path in files.items():
        edges[name] = {t for t, _ in project_imports(path) if t in files and t != name}
    return edges


def test_no_import_circle():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import circles: {cycles}"


def test_the_network_imports_only_its_config_and_the_model_layer_never_the_app():
    edges = graph()
    assert edges["model.modeling"] <= {"model.config"}, edges["model.modeling"]
    leaks = {m: sorted(t for t in e if t.startswith("app")) for m, e in edges.items() if m.startswith("model")}
    assert not any(leaks.values()), leaks


def test_no_project_import_inside_a_function():
    hidden = {module_name(p): [t for t, inside in project_imports(p) if inside]
              for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert not any(hidden.values()), {m: t for m, t in hidden.items() if t}
