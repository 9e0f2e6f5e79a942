"""What `make demo` installs (`pip install -e ".[all]"`) is enough for every example.

CI installs the `dev` extra, a superset, so a module the demo imports but `all` does not bring
would pass every other test and still fail a newcomer's first command. Here each third-party
module an example imports must belong to a distribution that the `all` extra pulls in, directly
or through its dependencies (read from the installed packages' metadata).
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "bge-rerank-plugins"
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path``, function bodies included, except
    optional ones (inside ``try:`` with an ``except ImportError`` / ``ModuleNotFoundError``)."""
    names: set[str] = set()

    def optional(node: ast.Try) -> bool:
        caught = [h.type for h in node.handlers if h.type is not None]
        flat = [e for c in caught for e in (c.elts if isinstance(c, ast.Tuple) else [c])]
        return any(
            isinstance(e, ast.Name) and e.id in {"ImportError", "ModuleNotFoundError"} for e in flat
        )

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        for field, value in ast.iter_fields(node):
            if isinstance(node, ast.Try) and field == "body" and optional(node):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return names


def project_requirements(extra: str) -> list[Requirement]:
    """The core dependencies plus ``extra``'s, with the project's references to its own extras
    expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    found = [Requirement(r) for r in project["dependencies"]]
    pending, seen = [extra], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in extras[name]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == PROJECT:
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def installed_closure(requirements: list[Requirement]) -> set[str]:
    """Canonical names of the distributions these requirements install, transitively."""
    visited: set[tuple[str, frozenset[str]]] = set()
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        name, extras = canonicalize_name(requirement.name), frozenset(requirement.extras)
        # Keyed with the extras: a package asked for again with other extras brings more, and
        # packages that name themselves with extras (ray[data] -> ray[...]) end here.
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: its own dependencies cannot be read
        for line in requires:
            child = Requirement(line)
            wanted = child.marker is None or any(
                child.marker.evaluate({"extra": e}) for e in (extras or {""})
            )
            if wanted:
                pending.append(child)
    return {name for name, _ in visited}


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_all_extra_installs_what_the_example_imports(example: str) -> None:
    closure = installed_closure(project_requirements("all"))
    owners = metadata.packages_distributions()
    missing = {}
    for module in sorted(imported_modules(ROOT / "examples" / example)):
        if module in sys.stdlib_module_names or module in {"__future__", "bge_rerank_plugins"}:
            continue
        distributions = {canonicalize_name(d) for d in owners.get(module, [])}
        assert distributions, f"{example} imports {module!r}, which no installed package provides"
        if not distributions & closure:
            missing[module] = sorted(distributions)
    assert not missing, (
        f"examples/{example} imports modules that `pip install .[all]` does not install: "
        f"{missing}; add their distribution to an extra that `all` includes (pyproject.toml)"
    )


def test_optional_imports_are_not_required(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import json\nimport numpy as np\n"
        "def f():\n    from torch import nn\n"
        "    try:\n        import cohere\n    except ImportError:\n        pass\n"
        "    try:\n        import ray\n    except (OSError, ModuleNotFoundError):\n        pass\n"
        "    try:\n        import onnx\n    except ValueError:\n        pass\n",
        encoding="utf-8",
    )
    assert imported_modules(script) == {"json", "numpy", "torch", "onnx"}


def test_the_closure_follows_extras_and_dependencies() -> None:
    closure = installed_closure(project_requirements("all"))
    assert {"torch", "transformers", "llama-index-core", "langchain-core"} <= closure
    assert "tokenizers" in closure  # only through transformers
    assert "pytest" not in closure  # a dev-only tool
