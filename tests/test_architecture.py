"""The package's layer rules and size budget, read from the source's import graph.

The layers, lowest first (a module may import only from its own layer's group or below):

0. leaves: small pure modules that import nothing from the package;
1. runtime: how a checkpoint becomes a callable (``runtime/``, and the one-release shims at the
   old paths ``loading``, ``first_token``, ``half_weights``, ``backends``);
2. core: the option set, the scorer and chunking;
3. support: what several consumers share (the adapters' pydantic base, BEIR files, BM25, the
   offline MiniLM weights, the tiny test models);
4. consumers: the LlamaIndex and LangChain adapters, evaluation and fine-tuning, which never
   import each other, with one written exception: ``finetune.engine -> llama_index``, because
   LlamaIndex's ``get_finetuned_model`` must return its postprocessor;
5. entry points: the CLI, the server and Ray, which may import anything below them.

Every import counts, function-level and ``TYPE_CHECKING`` ones included: a hidden import is
still a dependency. The package's ``__init__`` (lazy exports of everything) is the one module
left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "bge_rerank_plugins"
ROOT = Path(__file__).resolve().parent.parent / "src" / PACKAGE

MAX_LINES = 400

LEAVES = {"errors", "fields", "batching", "score_cache", "tokenization", "jsonl"}
RUNTIME = {"runtime", "loading", "first_token", "half_weights", "backends"}
CORE = {"config", "scorer", "chunking", "fusion", "calibration", "ranking"}
SUPPORT = {
    "adapter_options",
    "adapter_ranking",
    "adapter_scoring",
    "beir",
    "bm25",
    "minilm",
    "remote",
    "testing",
    "testing_causal",
}
CONSUMERS = {"llama_index", "langchain", "evaluation", "finetune"}
ENTRY_POINTS = {"cli", "server", "ray_scoring"}
LAYERS = [LEAVES, RUNTIME, CORE, SUPPORT, CONSUMERS, ENTRY_POINTS]

#: Imports that cross a rule on purpose, each with its reason.
ALLOWED_EXCEPTIONS = {
    # LlamaIndex's finetune engine API returns the postprocessor from get_finetuned_model.
    ("finetune.engine", "llama_index"),
    # The engine's held-out yardstick reports nDCG@10 as evaluate_models defines it (one
    # definition of the metric, pure functions with no imports of their own).
    ("finetune.holdout", "evaluation.metrics"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {_module_name(p): p for p in ROOT.rglob("*.py")}
    found.pop("", None)  # the package's own __init__: lazy exports of everything
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The package-relative module an ``from ... import`` names, or None if outside."""
    if node.level == 0:
        name = node.module or ""
        if name == PACKAGE:
            return ""
        if not name.startswith(PACKAGE + "."):
            return None
        return name[len(PACKAGE) + 1 :]
    base = module.split(".") if module else []
    if not is_package:
        base = base[:-1]
    up = node.level - 1
    if up:
        base = base[:-up] if up <= len(base) else []
    if node.module:
        base = base + node.module.split(".")
    return ".".join(base)


def _imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import of the package in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            if target is not None:
                found.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.append((alias.name[len(PACKAGE) + 1 :], []))
    return found


def _expand(target: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """``from .pkg import sub`` imports the submodule ``pkg.sub``; count it as that."""
    subs = [f"{target}.{n}" if target else n for n in names]
    hits = [s for s in subs if s in modules]
    return hits or ([target] if target in modules or target == "" else [])


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for target, names in _imports(module, path):
            edges.update(t for t in _expand(target, names, modules) if t != module)
        graph[module] = edges
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for rank, group in enumerate(LAYERS):
        if top in group:
            return rank
    raise AssertionError(
        f"module {module!r} belongs to no layer: add it to one in tests/test_architecture.py"
    )


def _group(module: str) -> str:
    return module.split(".")[0]


def test_every_module_has_a_layer() -> None:
    for module in _modules():
        _layer(module)


def test_nothing_imports_the_package_root() -> None:
    """The root's lazy exports are for users; inside the package import the defining module."""
    offenders = sorted(m for m, edges in _graph().items() if "" in edges)
    assert not offenders, f"these import from bge_rerank_plugins itself: {offenders}"


def test_layer_rules() -> None:
    problems = []
    for module, edges in sorted(_graph().items()):
        for target in sorted(edges):
            if (module, target) in ALLOWED_EXCEPTIONS or target == "":
                continue
            own, theirs = _layer(module), _layer(target)
            same_group = _group(module) == _group(target)
            if theirs > own:
                problems.append(f"{module} (layer {own}) imports {target} (layer {theirs})")
            elif theirs == own and not same_group and own in (0, 4):
                # leaves import no one; consumers never import each other
                problems.append(f"{module} imports {target}, another module of its layer")
    assert not problems, "\n".join(problems)


def test_the_runtime_imports_only_itself_and_leaves() -> None:
    """Not even the one-release shims at the old paths: they point into runtime/, not back."""
    problems = [
        f"{module} imports {target}"
        for module, edges in sorted(_graph().items())
        if _group(module) == "runtime"
        for target in sorted(edges)
        if _group(target) != "runtime" and _layer(target) != 0
    ]
    assert not problems, "\n".join(problems)


def test_leaves_import_nothing_from_the_package() -> None:
    graph = _graph()
    for module in graph:
        if _layer(module) == 0:
            assert not graph[module], f"leaf {module} imports {sorted(graph[module])}"


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == "" or nxt not in graph:
                continue
            # a package importing its own submodules (re-exports) is not a cycle of jobs
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_no_module_imports_another_modules_private_names() -> None:
    modules = _modules()
    problems = []
    for module, path in sorted(modules.items()):
        for target, names in _imports(module, path):
            if target == module:
                continue
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    problems.append(f"{module} imports {name} from {target or PACKAGE}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", [*sorted(_modules()), ""])
def test_size_budget(module: str) -> None:
    path = ROOT / "__init__.py" if module == "" else _modules()[module]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (budget {MAX_LINES})"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The graph reader sees relative, absolute and function-level imports."""
    source = (
        "from .scorer import CrossEncoderScorer\n"
        "from bge_rerank_plugins.fields import _private\n"
        "def f():\n    from ..server import app\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source, encoding="utf-8")
    found = _imports("finetune.probe", path)
    assert ("finetune.scorer", ["CrossEncoderScorer"]) in found
    assert ("fields", ["_private"]) in found
    assert ("server", ["app"]) in found
