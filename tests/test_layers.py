"""The package's layering: imports run downwards only, no circles, no reaching into private names.

cli -> commands -> web -> serve -> listen -> answer | limits -> upstream | nat | migrate -> config
-> wire. A small AST walk (every
import, including those inside functions and under TYPE_CHECKING), so the layering cannot rot.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "splitdns"

#: Each top-level part of splitdns and its floor; a part may import only from lower floors.
LAYERS = {
    "__init__": 0,
    "wire": 0,
    "config": 1,
    "upstream": 2,
    "nat": 2,
    "migrate": 2,
    "dynamic": 2,
    "answer": 3,
    "limits": 3,
    "listen": 4,
    "serve": 5,
    "web": 6,
    "commands": 7,
    "cli": 8,
    "__main__": 9,
}
ORDER = (
    "cli -> commands -> web -> serve -> listen -> answer | limits -> upstream | nat | migrate "
    "| dynamic "
    "-> config -> wire"
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """`splitdns.answer.cache` -> `answer`; the package itself -> `__init__`."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def imports_of(path: Path, root: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every splitdns import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root.name:
                    found.append((node.lineno, alias.name, []))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            names = [a.name for a in node.names]
            # `from splitdns.answer import cache` imports the module splitdns.answer.cache
            submodules = [n for n in names if _is_module(root, f"{target}.{n}")]
            for sub in submodules:
                found.append((node.lineno, f"{target}.{sub}", []))
            rest = [n for n in names if n not in submodules]
            if rest:
                found.append((node.lineno, target, rest))
    return found


def _is_module(root: Path, dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def violations(root: Path) -> list[str]:
    """Every import that breaks the layering, as `FILE:LINE: message`; then every circle."""
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        mine = part_of(me)
        graph.setdefault(me, set())
        where = f"{path.relative_to(root.parent)}"
        if mine not in LAYERS:
            problems.append(f"{where}: {mine} has no floor in LAYERS ({ORDER})")
            continue
        for line, target, names in imports_of(path, root):
            graph[me].add(target)
            theirs = part_of(target)
            if theirs == mine:
                continue
            if theirs not in LAYERS:
                problems.append(f"{where}:{line}: imports {target}, which has no floor")
            elif LAYERS[theirs] >= LAYERS[mine] and theirs != "__init__":
                problems.append(
                    f"{where}:{line}: {mine} (floor {LAYERS[mine]}) imports {target} "
                    f"({theirs}, floor {LAYERS[theirs]}): imports run downwards only: {ORDER}"
                )
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in target.split(".") if p.startswith("_") and p != "__init__"]
            if private:
                problems.append(
                    f"{where}:{line}: reaches into {theirs}'s private name(s) {', '.join(private)}"
                )
    problems += [f"import circle: {' -> '.join(c)}" for c in circles(graph)]
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles among modules (a package import counts as an import of its __init__)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def floors(graph_root: Path) -> int:
    """How many floors the module import graph has (the longest import chain)."""
    graph = {
        module_name(p, graph_root): {t for _, t, _ in imports_of(p, graph_root)}
        for p in graph_root.rglob("*.py")
    }
    depth: dict[str, int] = {}

    def height(node: str, seen: frozenset[str]) -> int:
        if node in depth:
            return depth[node]
        below = [
            height(t, seen | {node}) for t in graph.get(node, ()) if t in graph and t not in seen
        ]
        depth[node] = 1 + max(below, default=0)
        return depth[node]

    return max(height(n, frozenset()) for n in graph)


def test_imports_run_downwards_with_no_circles() -> None:
    assert violations(PACKAGE) == []


def test_every_subpackage_says_what_it_owns() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init} has no docstring saying what it owns and may import"


def test_the_check_catches_an_upward_import_a_private_name_and_a_circle(tmp_path: Path) -> None:
    root = tmp_path / "splitdns"
    for sub in ("config", "serve", "answer"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text('"""x."""\n')
    (root / "__init__.py").write_text("")
    (root / "wire.py").write_text("")
    (root / "config" / "model.py").write_text("from splitdns.serve.server import Server\n")
    (root / "serve" / "server.py").write_text("from splitdns.answer.chain import _private\n")
    (root / "answer" / "chain.py").write_text("from splitdns.answer import views\n")
    (root / "answer" / "views.py").write_text("from splitdns.answer import chain\n")
    found = violations(root)
    assert found == [
        "splitdns/config/model.py:1: config (floor 1) imports splitdns.serve.server (serve, "
        f"floor 5): imports run downwards only: {ORDER}",
        "splitdns/serve/server.py:1: reaches into answer's private name(s) _private",
        "import circle: splitdns.answer.chain -> splitdns.answer.views -> splitdns.answer.chain",
    ]


if __name__ == "__main__":  # the figures for the layout's closing note
    print("floors:", floors(PACKAGE), "problems:", violations(PACKAGE) or "none")
