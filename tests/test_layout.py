"""The shape of the repository: models/ feeds code/, which feeds training/ and fid/, which feed cli/, which feeds
the scripts; the miniature runs the scripts; utils/ holds leaves. No import cycles between files, none dodged by
an import inside a function."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("models", "code", "training", "fid", "cli", "utils", "miniature", "benchmarks")
# what each package may import from the project (itself always)
ALLOWED = {
    "utils": set(),
    "models": {"utils"},
    "code": {"models", "utils"},
    "training": {"code", "models", "utils"},
    "fid": {"code", "models", "utils"},
    "cli": {"training", "fid", "code", "models", "utils"},
    "benchmarks": {"cli", "fid", "code", "models", "utils"},
    "miniature": {"<script>", "training", "cli", "code", "models", "utils"},
    "<script>": {"training", "fid", "cli", "code", "models", "utils"},
}


def project_files() -> dict[str, Path]:
    """module name -> file, for every package module and root script."""
    files = {p.stem: p for p in ROOT.glob("*.py")}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return files


def package_of(module: str, files: dict[str, Path]) -> str:
    top = module.split(".")[0]
    return top if top in PACKAGES else "<script>"


def resolve(node: ast.AST, module: str, path: Path, files: dict[str, Path]) -> list[str]:
    """The project modules an import statement loads (a package's __init__ only when it is imported itself)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            pkg = pkg[: len(pkg) - node.level + 1]
            base = ".".join(pkg + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
    return sorted({n for n in names if n in files})


def imports(files: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> project modules it imports at import time, imports hidden inside functions)."""
    graph, hidden = {}, []
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)) and resolve(inner, module, path, files):
                        hidden.append(f"{path.name}:{inner.lineno}")
        for node in tree.body:
            for inner in ast.walk(node):
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    break
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    graph[module] |= set(resolve(inner, module, path, files))
    return graph, hidden


@pytest.fixture(scope="module")
def layout():
    files = project_files()
    return files, *imports(files)


def test_no_imports_hidden_inside_functions(layout):
    _, _, hidden = layout
    assert hidden == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (depth-first search), or None."""
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n, stack + [n])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [m])):
            return cycle
    return None


def test_no_import_cycles(layout):
    _, graph, _ = layout
    assert find_cycle(graph) is None


def test_packages_point_one_way(layout):
    files, graph, _ = layout
    wrong = []
    for m, deps in graph.items():
        mine = package_of(m, files)
        for d in deps:
            theirs = package_of(d, files)
            if theirs != mine and theirs not in ALLOWED[mine] or (mine == theirs == "<script>" and d != m):
                wrong.append(f"{m} ({mine}) imports {d} ({theirs})")
    assert wrong == []


def test_the_checker_sees_what_it_should(tmp_path):
    """The walker itself: relative imports resolve, a hidden import and a cycle are found."""
    files = {"code": ROOT / "code" / "__init__.py", "code.decoder": ROOT / "code" / "decoder.py",
             "code.fast": ROOT / "code" / "fast.py", "code.loop": ROOT / "code" / "loop.py",
             "code.sampling": ROOT / "code" / "sampling.py", "models": ROOT / "models" / "__init__.py"}
    graph, _ = imports(files)
    assert {"code.fast", "code.loop", "code.sampling", "models"} <= graph["code.decoder"]
    (tmp_path / "a.py").write_text("import b\n\n\ndef f():\n    from c import x\n")
    (tmp_path / "b.py").write_text("from a import y\n")
    (tmp_path / "c.py").write_text("")
    graph, hidden = imports({"a": tmp_path / "a.py", "b": tmp_path / "b.py", "c": tmp_path / "c.py"})
    assert graph == {"a": {"b"}, "b": {"a"}, "c": set()} and hidden == ["a.py:5"]
    assert find_cycle(graph) == ["a", "b", "a"] and find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_miniature_imports_the_scripts_it_runs(layout):
    """The pipeline runs the training scripts as imported modules, so that this walker sees those edges."""
    _, graph, _ = layout
    assert {"train_vqvae", "train_var", "train_drafter", "train_refiner"} <= graph["miniature.pipeline"]
