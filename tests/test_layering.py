"""The import structure of `cheers_pl`: imports point only downward, and there are no cycles.

Every import statement is read with `ast`, those inside functions and under `TYPE_CHECKING` included (a lazy import
is an import). The floors, top to bottom:

    commands    cli, __main__ and the commands (train, evaluate, ablate, sample, inspect, export, data_stats, bench),
                with what composes them: config (the composed ExperimentConfig), registry (the schemas), restore
    callbacks   schedule, gather and log metrics (R10)
    eval        metric definitions and the evaluate sections
    stage       the LightningModules (R4) and the distributed strategies
    checkpoint  checkpoint files: safe reading, the saved config, renamed keys | the released checkpoint's layout
    pipeline    text in, text and images out, over the model
    model/data  tensors-in, tensors-out networks | the synthetic world, shards, processing, batches, DataModule
    objective   the flow process, losses, samplers | the optimiser
    base        model/layers and the package root

Rule for imports on one floor: only inside the same package (`cheers_pl.model.*` may import `cheers_pl.model.*`,
never `cheers_pl.data.*`); the commands floor is one package of entry points and may import itself. Run this file
(`python -m tests.test_layering [ROOT]`) to print files per floor, arrows that run back up and cycles.
"""

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "cheers_pl"
COMMANDS = (
    "cheers_pl.__main__", "cheers_pl.cli", "cheers_pl.config", "cheers_pl.registry", "cheers_pl.restore",
    "cheers_pl.train", "cheers_pl.evaluate", "cheers_pl.ablate", "cheers_pl.sample", "cheers_pl.inspect",
    "cheers_pl.export", "cheers_pl.data_stats", "cheers_pl.bench", "cheers_pl.diagnose", "cheers_pl.export_tokenizer",
    "cheers_pl.convert", "cheers_pl.official_samples",
)  # fmt: skip
# floor name -> module prefixes (a module belongs to the floor of its longest matching prefix)
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("commands", COMMANDS),
    ("callbacks", ("cheers_pl.callbacks",)),
    ("eval", ("cheers_pl.eval",)),
    ("stage", ("cheers_pl.stage", "cheers_pl.strategies")),
    ("checkpoint", ("cheers_pl.checkpoint", "cheers_pl.official")),
    ("pipeline", ("cheers_pl.pipeline",)),
    ("model/data", ("cheers_pl.model", "cheers_pl.data")),
    ("objective", ("cheers_pl.objective", "cheers_pl.optim")),
    ("base", ("cheers_pl.model.layers", "cheers_pl")),
]
# R2: the networks and the process never import training infrastructure
FORBIDDEN_THIRD_PARTY = {"cheers_pl.model": ("lightning", "omegaconf", "webdataset"), "cheers_pl.objective": (
    "lightning", "omegaconf", "webdataset")}  # fmt: skip


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import statement anywhere in the file."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            out.append((base, [alias.name for alias in node.names], node.lineno))
    return out


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    """Internal module graph (module -> modules it imports) and third-party imports (module -> (name, line))."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    external: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for mod, path in files.items():
        for target, names, line in _imports(ast.parse(path.read_text()), mod, path.name == "__init__.py"):
            if not target.startswith("cheers_pl"):
                external[mod].append((target, line))
                continue
            hits = [f"{target}.{n}" for n in names if f"{target}.{n}" in files] or [target]
            for hit in hits:
                while hit not in files and "." in hit:
                    hit = hit.rsplit(".", 1)[0]
                if hit != mod:
                    edges[mod].add(hit)
    for mod in files:
        edges.setdefault(mod, set())
    return dict(edges), dict(external)


def floor_of(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is on no floor: place it in FLOORS")
    return best


def package_of(module: str) -> str:
    """The unit inside which same-floor imports are allowed: the commands floor, else the first-level package."""
    if floor_of(module) == 0:
        return "commands"
    if module.startswith("cheers_pl.model.layers"):
        return "cheers_pl.model.layers"
    return ".".join(module.split(".")[:2])


def upward_arrows(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(edges.items()):
        for target in sorted(targets):
            up = floor_of(target) < floor_of(mod)
            sideways = floor_of(target) == floor_of(mod) and package_of(target) != package_of(mod)
            if up or sideways:
                how = "up" if up else "across"
                bad.append(f"{mod} ({FLOORS[floor_of(mod)][0]}) -> {target} ({FLOORS[floor_of(target)][0]}): {how}")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_floor() -> None:
    edges, _ = import_graph()
    for mod in edges:
        floor_of(mod)


def test_imports_point_only_downward() -> None:
    edges, _ = import_graph()
    bad = upward_arrows(edges)
    assert not bad, "imports that run back up or across a floor:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    edges, _ = import_graph()
    found = cycles(edges)
    assert not found, f"import cycles: {found}"


def test_model_and_objective_import_no_training_infrastructure() -> None:
    _, external = import_graph()
    bad = [
        f"{mod}:{line} imports {name}"
        for mod, items in external.items()
        for package, banned in FORBIDDEN_THIRD_PARTY.items()
        if mod.startswith(package)
        for name, line in items
        if name.split(".")[0] in banned
    ]
    assert not bad, bad


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path) -> None:
    """A lazy import inside a function and one under TYPE_CHECKING are both arrows (and here both run up)."""
    pkg = tmp_path / "cheers_pl"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "stage.py").write_text("from cheers_pl.model import net\n")
    body = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cheers_pl import stage\n"
    (pkg / "model" / "net.py").write_text(body + "def f():\n    from ..data import x\n")
    (pkg / "data.py").write_text("")
    edges, _ = import_graph(pkg)
    assert edges["cheers_pl.model.net"] == {"cheers_pl.stage", "cheers_pl.data"}
    assert any("cheers_pl.model.net (model/data) -> cheers_pl.stage (stage): up" in b for b in upward_arrows(edges))
    assert cycles(edges) == [["cheers_pl.model.net", "cheers_pl.stage"]]


def summary(root: Path = ROOT) -> str:
    edges, _ = import_graph(root)
    per_floor: dict[str, int] = defaultdict(int)
    for mod in edges:
        per_floor[FLOORS[floor_of(mod)][0]] += 1
    lines = ["files per floor: " + ", ".join(f"{name} {per_floor[name]}" for name, _ in FLOORS)]
    bad = upward_arrows(edges)
    lines.append(f"arrows up or across: {len(bad)}")
    lines += [f"  {b}" for b in bad]
    found = cycles(edges)
    lines.append(f"cycles: {len(found)}")
    lines += [f"  {' <-> '.join(c)}" for c in found]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT))
