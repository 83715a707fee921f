"""The package's layers import only downward, and align's own imports sit at the top of files.

runner / validate -> stages, hub, report, chat -> recipe, stage data and hash, base model,
honesty, ppo -> kinds, tiny, generation, modeling -> data, artifacts, profiles, distributed ->
errors and small helpers.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "align"

# Lowest first; a module belongs to the layer of its longest matching prefix.
LAYERS = [
    ("errors", "importing", "jsonl", "console"),
    ("data", "artifacts", "profiles", "distributed", "honesty.responses", "ppo.core", "trackers"),
    ("kinds", "tiny", "generation", "modeling"),
    ("recipe", "lineage", "stage_data", "stage_hash", "base_model", "honesty", "ppo", "rewards"),
    ("stages", "hub", "report", "chat"),
    ("runner", "validate"),
    ("cli", "__main__"),
]
# Where align's own imports may wait until a function runs, and why.
LAZY = {"cli": "command handlers import their layer on use: `align --help` needs no torch"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def layer(module: str) -> int:
    best = (-1, -1)
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), level))
    assert best[1] >= 0, f"align.{module} is in no layer: add it to LAYERS"
    return best[1]


def align_imports(tree: ast.Module):
    """(imported module, line, whether at module level) for every `align.*` import."""
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("align"):
            yield node.module.removeprefix("align").lstrip("."), node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("align."):
                    yield alias.name.removeprefix("align."), node.lineno, id(node) in top


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path, ast.parse(path.read_text())


def test_no_module_imports_a_layer_above_it():
    wrong = []
    for name, path, tree in modules():
        for target, line, _ in align_imports(tree):
            if target and layer(target) > layer(name):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} align.{name} "
                             f"(layer {layer(name)}) imports align.{target} (layer {layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph = {name: {t for t, _, _ in align_imports(tree) if t} for name, _, tree in modules()}
    cycles = sorted(f"align.{a} <-> align.{b}" for a in graph for b in graph[a]
                    if a < b and a in graph.get(b, ()))
    assert not cycles, cycles


def test_align_imports_are_at_the_top_of_their_files():
    lazy = [f"{path.relative_to(PACKAGE.parent)}:{line} imports align.{target}"
            for name, path, tree in modules() if name not in LAZY
            for target, line, at_top in align_imports(tree) if not at_top
            and not _type_checking_only(tree, line)]
    assert not lazy, "\n".join(lazy)


def _type_checking_only(tree: ast.Module, line: int) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            if node.lineno <= line <= node.end_lineno:
                return True
    return False
