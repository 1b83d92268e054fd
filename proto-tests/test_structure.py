"""The shape of the source tree: no import cycle between files under src/, no file
over 700 lines, and the module maps in lib.rs and README.md match the tree."""

from __future__ import annotations

import re
from pathlib import Path

import codemap

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
MAX_LINES = 700


def test_the_cycle_finder_finds_cycles(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "lib.rs").write_text("mod a;\nmod b;\nmod c;\n")
    (tmp_path / "a" / "mod.rs").write_text("mod x;\nmod y;\nuse crate::b::f;\n")
    # a child naming its parent is not an edge; siblings naming each other are
    (tmp_path / "a" / "x.rs").write_text("use super::{Shared, y::g};\n")
    (tmp_path / "a" / "y.rs").write_text("fn g() { super::x::h() }\n")
    # a use tree with a renaming and `self`
    (tmp_path / "b.rs").write_text("use crate::{c::{self, k as kk}};\n")
    (tmp_path / "c.rs").write_text("// use crate::a::f;\nconst S: &str = \"crate::b\";\n")
    edges = codemap.graph(tmp_path)
    assert edges[("a", "x")] == {("a", "y")}
    assert edges[("a",)] == {("b",)}
    assert edges[("b",)] == {("c",)}
    assert edges[("c",)] == set(), "comments and strings are not code"
    assert codemap.cycles(edges) == [[("a", "x"), ("a", "y")]]
    (tmp_path / "c.rs").write_text("use crate::a;\n")
    found = codemap.cycles(codemap.graph(tmp_path))
    assert [("a",), ("b",), ("c",)] in found


def test_no_import_cycle_between_files():
    edges = codemap.graph(SRC)
    assert len(edges) > 50, "the source tree was not read"
    found = codemap.cycles(edges)
    report = [
        " <-> ".join(codemap.name(m) for m in group)
        + ": " + "; ".join(f"{codemap.name(a)} -> {codemap.name(b)}"
                           for a in group for b in sorted(edges[a]) if b in group)
        for group in found
    ]
    assert not found, "import cycles:\n" + "\n".join(report)


def test_no_file_under_src_is_over_700_lines():
    long = {str(p.relative_to(REPO)): n for p in SRC.rglob("*.rs")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split it; unit tests may go to a sibling tests.rs): {long}"


def _lib_modules() -> set[str]:
    return set(re.findall(r"^pub mod (\w+);", (SRC / "lib.rs").read_text(), re.M))


def test_lib_map_names_every_module():
    text = (SRC / "lib.rs").read_text()
    doc = "\n".join(line for line in text.splitlines() if line.startswith("//!"))
    mapped = set(re.findall(r"^//! - `(\w+)`", doc, re.M))
    assert mapped == _lib_modules(), (
        f"lib.rs map lists {sorted(mapped)}, lib.rs declares {sorted(_lib_modules())}")


def test_readme_code_map_matches_the_tree():
    readme = (REPO / "README.md").read_text()
    m = re.search(r"^## Code map\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert m, "README.md has no '## Code map' section"
    section = m.group(1)
    paths = set(re.findall(r"`(src/[\w/.]+)`", section))
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"README code map names paths that do not exist: {missing}"
    for module in _lib_modules():
        as_file, as_dir = f"src/{module}.rs", f"src/{module}/"
        assert as_file in paths or any(p.startswith(as_dir) for p in paths), (
            f"README code map does not mention module {module}")
    # every file under src/ is named (by its name, or a path ending in it)
    named = {t.rstrip("/").split("/")[-1] for t in re.findall(r"`([\w/.]+)`", section)}
    unnamed = sorted(str(p.relative_to(REPO)) for p in SRC.rglob("*.rs")
                     if p.name not in ("tests.rs", "testutil.rs", "lib.rs")
                     and p.name not in named and not (p.name == "mod.rs" and p.parent.name in named))
    assert not unnamed, f"README code map does not name: {unnamed}"
