"""The module graph of a Rust source tree, read from the text: which file's code
names which other file's module (through `use` trees, `crate::`/`super::` paths and
`pub use` re-exports), and the import cycles in it.

One rule shapes the graph: a module's use of one of its ancestors (a child file naming
`super::Shared`) is not an edge. A parent that splits its work into child files owns
the types they share; that is how a module is split, not a cycle. Everything else
counts: two siblings naming each other, or two subtrees (`net` and `proxy`) that do.
"""

from __future__ import annotations

import re
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
Module = tuple[str, ...]


def module_of(root: Path, path: Path) -> Module:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts in (["lib"], ["main"]):
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def _code(text: str) -> str:
    """The text without comments and string contents."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def expand_use(tree: str) -> list[list[str]]:
    """`a::{b, c::{d as e}, self}` -> [[a, b], [a, c, d], [a]]."""
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree)
    out: list[list[str]] = []

    def parse(i: int, prefix: list[str]) -> int:
        start = i
        while i < len(tree) and tree[i] not in "{,}":
            i += 1
        segs = prefix + [s for s in tree[start:i].split("::") if s]
        if i < len(tree) and tree[i] == "{":
            i += 1
            while i < len(tree) and tree[i] != "}":
                i = parse(i, segs)
                if i < len(tree) and tree[i] == ",":
                    i += 1
            return i + 1
        if segs and segs[-1] == "self":
            segs = segs[:-1]
        if segs:
            out.append(segs)
        return i

    parse(0, [])
    return out


def references(text: str, module: Module) -> list[Module]:
    """The absolute module paths a file's code names."""
    code = _code(text)
    paths = [p for m in re.finditer(r"\buse\s+([^;]+);", code) for p in expand_use(m.group(1))]
    paths += [m.group(1).split("::")
              for m in re.finditer(rf"\b((?:crate|super|kafka_tee)(?:::{IDENT})+)", code)]
    out = []
    for p in paths:
        if p[0] in ("crate", "kafka_tee"):
            out.append(tuple(p[1:]))
        elif p[0] == "super":
            here, rest = list(module), list(p)
            while rest and rest[0] == "super":
                here, rest = here[:-1], rest[1:]
            out.append(tuple(here + rest))
    return out


def graph(root: Path) -> dict[Module, set[Module]]:
    """File (as its module) -> the other files whose modules its code names."""
    files = {module_of(root, p): p for p in root.rglob("*.rs") if p.name != "main.rs"}

    def file_for(path: Module) -> Module | None:
        for n in range(len(path), -1, -1):
            if path[:n] in files:
                return path[:n]
        return None

    edges: dict[Module, set[Module]] = {}
    for module, path in files.items():
        targets = set()
        for ref in references(path.read_text(), module):
            f = file_for(ref)
            if f is None or f == module or module[:len(f)] == f:
                continue  # unknown (a crate), itself, or an ancestor
            targets.add(f)
        edges[module] = targets
    return edges


def cycles(edges: dict[Module, set[Module]]) -> list[list[Module]]:
    """The strongly connected groups of more than one file."""
    index: dict[Module, int] = {}
    low: dict[Module, int] = {}
    stack: list[Module] = []
    on: set[Module] = set()
    found: list[list[Module]] = []

    def visit(v: Module) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def name(m: Module) -> str:
    return "::".join(m) or "crate"
