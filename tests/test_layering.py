"""The house's arrows (DESIGN.md "Layout"): core → zoo → analyzers → surgeries → cli_commands.

Drawn from the code's imports — module-level *and* function-local ones, and the strings handed
to ``import_module`` — so an upward arrow cannot hide inside a function:

- ``surgery.core`` imports nothing of the project above it (it fills its registries from the
  entry points of ``surgery.plugins`` instead: ``surgery/core/plugins.py``);
- the zoo imports no analyzer, surgery or CLI module; analyzers import no surgery;
- no library module imports ``cli_commands`` or ``cli``;
- and the project's module-level import graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

from conftest import ROOT

RANK = {"core": 0, "zoo": 1, "analyzers": 2, "surgeries": 3, "api": 4, "cli": 5}


def layer(module: str) -> str | None:
    if module.startswith("surgery.core"):
        return "core"
    if module == "surgery":
        return "api"  # the package root: the public API, above every library layer
    if module.split(".")[0] == "zoo":
        return "zoo"
    if module.split(".")[0] == "analyzers":
        return "analyzers"
    if module.split(".")[0] == "cli_commands" or module == "cli":
        return "cli"
    if module.split(".")[0] == "surgery":
        return "surgeries"
    return None


def library_files() -> list[Path]:
    out = []
    for top in ("surgery", "analyzers", "zoo"):
        out += sorted((ROOT / top).rglob("*.py"))
    return out


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level?) for every import in the file, relative ones
    resolved, plus string literals passed to ``import_module``."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    top_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # "from pkg import name": name is a submodule or an attribute of pkg (resolved later)
            found += [(f"{base}.{a.name}", node.lineno, id(node) in top_level) for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.args[0].value, node.lineno, False))
    return found


def known_modules() -> set[str]:
    return {module_name(p) for p in library_files()} | {"cli"} | {
        module_name(p) for p in (ROOT / "cli_commands").rglob("*.py")}


def test_no_upward_import():
    known = known_modules()
    upward = []
    for f in library_files():
        me = module_name(f)
        mine = layer(me)
        for target, line, _ in imports(f):
            while target and target not in known:  # "from pkg import name": the module is pkg
                target = target.rpartition(".")[0]
            theirs = layer(target) if target else None
            if theirs is None or target == me:
                continue
            if RANK[theirs] > RANK[mine]:
                upward.append(f"{f.relative_to(ROOT)}:{line} ({mine}) imports {target} ({theirs})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_module_level_import_graph_has_no_cycle():
    known = known_modules()
    g = nx.DiGraph()
    for f in library_files():
        me = module_name(f)
        g.add_node(me)
        for target, _, top in imports(f):
            while target and target not in known:
                target = target.rpartition(".")[0]
            # a package's own __init__ importing its submodules is how packages are made; and a
            # module importing its parent package is implied by Python itself
            if top and target and target != me and not target.startswith(me + ".") and not me.startswith(target + "."):
                g.add_edge(me, target)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"{len(cycles)} import cycles, e.g. {' -> '.join(min(cycles, key=len))}"


@pytest.mark.parametrize("needle", ["import cli_commands", "from cli_commands", "import cli\n", "from cli import"])
def test_library_never_imports_the_cli(needle):
    hits = [str(f.relative_to(ROOT)) for f in library_files() if needle in f.read_text()]
    assert not hits, hits


def test_core_names_no_module_above_it_in_strings():
    """The core's registries are filled from pyproject.toml's entry points: no core module names
    a zoo, analyzer or surgery module, even as a string to import later."""
    import re

    known = known_modules()
    bad = []
    for f in sorted((ROOT / "surgery" / "core").rglob("*.py")):
        for m in re.finditer(r"[\"']([A-Za-z_]\w*(?:\.\w+)+)[\"']", f.read_text()):
            name = m.group(1)
            if name in known and layer(name) not in ("core", None):
                bad.append(f"{f.relative_to(ROOT)}: {name}")
    assert not bad, bad


def test_every_registering_module_is_an_entry_point():
    """The modules that call ``@replayable`` or the plugin decorators are the entry points of
    ``surgery.plugins`` (pyproject.toml), so the registries are complete whatever was imported."""
    import re
    import tomllib

    eps = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["surgery.plugins"].values())
    registering = set()
    for f in library_files():
        text = f.read_text()
        if re.search(r"^@(replayable|plugins\.(arch_kind|prefix_loader|suffix_loader))\(", text, flags=re.M):
            registering.add(module_name(f))
    # a package's submodule registers when its package (the entry point) imports it
    missing = {m for m in registering if not any(m == e or m.startswith(e + ".") for e in eps)}
    assert not missing, f"registering modules that are not entry points: {sorted(missing)}"
