"""The import graph of dss/, read from the code (module-level and function-level imports), has no
cycle; and the light modules (config checks the command line runs before anything heavy) import
no JAX, transformers or datasets."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dss"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(module: str, path: Path) -> set[str]:
    """The dss modules `module` imports anywhere in its code (a name imported from a package is
    its submodule where one exists)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.split(".")[0] == "dss")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "dss":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return {m for m in out if m in MODULES and m != module}


def graph() -> dict[str, set[str]]:
    return {m: imported(m, p) for m, p in MODULES.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_from_the_code():
    edges = graph()
    assert len(edges) > 60
    assert "dss.methods.base" in edges["dss.methods.star_dss"]  # from dss.methods.base import ...
    assert "dss.checks" in edges["dss.methods.star_dss"]  # from dss import checks
    assert "dss.objectives" in edges["dss.methods.star_dss"]  # imported inside a function


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_dss_has_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("module", ["dss.config", "dss.train_checks", "dss.methods", "dss.star_config", "dss.checks",
                                    "dss.files", "dss.tables"])
def test_light_modules_import_nothing_heavy(module):
    """What the command line runs before the job starts loads in a fresh interpreter without
    JAX, flax, transformers, datasets or torch."""
    code = (f"import sys, {module}; heavy = sorted({{m.split('.')[0] for m in sys.modules}} & "
            "{'jax', 'flax', 'transformers', 'datasets', 'torch', 'orbax'}); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]", f"{module} imports {out.strip()}"


def test_the_light_modules_name_what_the_heavy_ones_implement():
    """Checks that run before JAX keep their own copy of a few names; each must be the implemented set."""
    from dss import objectives, train_checks
    from dss.methods import lora, star_dss
    from dss.models import transformer

    assert star_dss.KL_ESTIMATORS == objectives.KL_ESTIMATORS
    assert lora.TARGETS == transformer.LORA_TARGETS
    assert set(train_checks.REMAT_POLICIES) == set(transformer.REMAT_POLICIES)
