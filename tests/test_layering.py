"""Imports flow one way: formats -> functional -> priors -> tensors -> inference -> layers -> conversion
-> data -> experiments -> cli. At import time (module-level statements) a module may import only from its
own layer or the layers before it; the ``from_dense`` classmethod aliases on layers import ``conversion``
lazily, inside the method, as the architecture sketch prescribes."""

import ast
from pathlib import Path

import bayestensor

ORDER = [
    "formats",
    "functional",
    "priors",
    "tensors",
    "inference",
    "layers",
    "conversion",
    "data",
    "experiments",
    "cli",
]
ROOT = Path(bayestensor.__file__).parent


def imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = path.relative_to(ROOT).parts[:-1]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(package[: len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("bayestensor"):
                target = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names] if not target else []
            found.update(t for t in (target[:1] or names) if t in ORDER)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "bayestensor" and len(parts) > 1 and parts[1] in ORDER:
                    found.add(parts[1])
    return found


def test_imports_flow_one_way():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if len(rel) < 2 or rel[0] not in ORDER:
            continue
        own = ORDER.index(rel[0])
        for layer in imported_layers(path):
            if ORDER.index(layer) > own:
                bad.append(f"{'/'.join(rel)} imports {layer}")
    assert not bad, bad


def test_cli_imports_only_experiments_and_the_package_root():
    for path in (ROOT / "cli").glob("*.py"):
        assert imported_layers(path) <= {"experiments", "cli"}, path.name
