"""Sizes (issue 22): no module of spine_dfl over 500 lines and no function over 80 (from its ``def`` to
its last line, docstring included), but for the exceptions CHANGELOG.md names. The list is kept in one
place, the bullet "- Size limits" of CHANGELOG's issue-22 section: its backticked names after
"Exceptions:" (dotted, ``spine_dfl.serve.node`` for a module, ``spine_dfl.serve.node.Node.run`` for a
function)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import spine_dfl

PACKAGE = Path(spine_dfl.__file__).resolve().parent
CHANGELOG = PACKAGE.parent / "CHANGELOG.md"
SECTION = "### Changed (issue 22: the house)"
BULLET = "- Size limits"
MODULE_LIMIT = 500
FUNCTION_LIMIT = 80


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def function_lengths(source: str, module: str) -> dict[str, int]:
    """Every function's (and method's, nested ones too) dotted name and its length in lines."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[f"{prefix}.{child.name}"] = child.end_lineno - child.lineno + 1
                visit(child, f"{prefix}.{child.name}")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}.{child.name}")
            else:
                visit(child, prefix)

    visit(ast.parse(source), module)
    return found


def oversized(root: Path = PACKAGE) -> dict[str, int]:
    """Modules over MODULE_LIMIT and functions over FUNCTION_LIMIT lines under ``root``, by dotted name."""
    over: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        module = _module_name(path, root)
        if (lines := len(source.splitlines())) > MODULE_LIMIT:
            over[module] = lines
        over.update({name: n for name, n in function_lengths(source, module).items() if n > FUNCTION_LIMIT})
    return over


def named_exceptions() -> set[str]:
    text = CHANGELOG.read_text(encoding="utf-8")
    start = text.index(SECTION) + len(SECTION)
    end = text.find("\n### ", start)
    section = text[start:end if end >= 0 else len(text)]
    bullets = [line for line in section.splitlines() if line.startswith(BULLET)]
    assert len(bullets) == 1, f"CHANGELOG.md's '{SECTION}' needs one bullet '{BULLET} ...'"
    _, marker, tail = bullets[0].partition("Exceptions:")
    assert marker, f"the '{BULLET}' bullet names its exceptions after 'Exceptions:' (or says none)"
    return set(re.findall(r"`([^`]+)`", tail))


needs_changelog = pytest.mark.skipif(not CHANGELOG.is_file(), reason="needs the source tree's CHANGELOG.md")


@needs_changelog
def test_no_module_or_function_over_the_limits_but_the_named_exceptions() -> None:
    over = {name: n for name, n in oversized().items() if name not in named_exceptions()}
    assert not over, (f"over {MODULE_LIMIT} lines (module) or {FUNCTION_LIMIT} (function): {over}; shorten them, "
                      f"or name them in CHANGELOG.md's '{BULLET}' bullet with the reason")


@needs_changelog
def test_every_named_exception_is_still_over_its_limit() -> None:
    stale = named_exceptions() - set(oversized())
    assert not stale, f"CHANGELOG.md names {sorted(stale)} as size exceptions, but they are within the limits (or gone)"


def test_the_measure_counts_from_def_to_the_last_line(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LIMIT - 2))
    source = f'def fits():\n    """Doc."""\n{body}\n\n\nclass C:\n    def too_long(self):\n        """Doc."""\n' \
             + body.replace("    ", "        ") + "\n        return 1\n"
    lengths = function_lengths(source, "m")
    assert lengths == {"m.fits": FUNCTION_LIMIT, "m.C.too_long": FUNCTION_LIMIT + 1}
    package = tmp_path / "spine_dfl"
    package.mkdir()
    (package / "big.py").write_text(source + "\n" * MODULE_LIMIT)
    assert oversized(package) == {"spine_dfl.big": len((source + "\n" * MODULE_LIMIT).splitlines()),
                                  "spine_dfl.big.C.too_long": FUNCTION_LIMIT + 1}
