"""The README and docs/: links that resolve, a README that fits on a few screens, a conformance
statement that lists exactly what the DICOM node negotiates, and a MkDocs build without warnings."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFORMANCE = DOCS / "conformance.md"

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans (links there are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (MkDocs' anchors): lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", page.read_text(encoding="utf-8")), re.M)
    return {_slug(heading) for heading in headings}


def _relative_links(page: Path) -> list[str]:
    links = _LINK.findall(_prose(page.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I)]


def test_docs_exist() -> None:
    for name in ("index", "ml-engineer", "pacs-admin", "radiologist", "conformance", "model-card", "results"):
        assert (DOCS / f"{name}.md").is_file(), name


@pytest.mark.parametrize("page", _pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for link in _relative_links(page):
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_slug_matches_mkdocs() -> None:
    assert _slug("Refused from the header, before any model") == "refused-from-the-header-before-any-model"
    assert _slug("Measured (2 idle CPU cores, no GPU)") == "measured-2-idle-cpu-cores-no-gpu"
    assert _slug("`summary.json`") == "summaryjson"


def test_readme_fits_on_a_few_screens() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 160, f"README.md has {len(lines)} lines"


def test_readme_keeps_the_quickstart() -> None:
    """.ci/run runs the Quickstart's second command; the README must keep both as they are."""
    text = README.read_text(encoding="utf-8")
    assert "## Quickstart\n\n```bash\npip install -e . && spine-dfl demo\n" \
           "pip install -e \".[test]\" && python -m pytest -q\n```\n" in text


def _section(page: Path, heading: str) -> str:
    """The text under the level-2 heading that starts with ``heading``, up to the next level-2 heading."""
    text = page.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{page.name}: no section '## {heading}'"
    return match.group(1)


def _uid_column(text: str, column: str) -> list[str]:
    """The UIDs in the column named ``column`` of every Markdown table in ``text`` that has one."""
    found: list[str] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        if column in header:
            value = cells[header.index(column)].strip("` ")
            assert _UID.match(value), f"{value!r} in column {column!r} is not a UID"
            found.append(value)
    return found


def test_conformance_lists_exactly_what_the_scp_negotiates() -> None:
    from spine_dfl.serve.scp import build_ae

    contexts = build_ae("SPINEDFL", None).supported_contexts
    negotiated_classes = {str(context.abstract_syntax) for context in contexts}
    storage = [context for context in contexts if str(context.abstract_syntax) != "1.2.840.10008.1.1"]
    negotiated_syntaxes = {str(syntax) for context in storage for syntax in context.transfer_syntax}
    # every storage context accepts the same syntaxes: the document lists them once
    assert all({str(s) for s in context.transfer_syntax} == negotiated_syntaxes for context in storage)

    classes = _uid_column(_section(CONFORMANCE, "Accepted SOP classes"), "SOP Class UID")
    syntaxes = _uid_column(_section(CONFORMANCE, "Accepted transfer syntaxes"), "Transfer Syntax UID")
    assert len(set(classes)) == len(classes), "a SOP class is listed twice"
    assert len(set(syntaxes)) == len(syntaxes), "a transfer syntax is listed twice"
    assert set(classes) == negotiated_classes
    assert set(syntaxes) == negotiated_syntaxes
    verification = next(c for c in contexts if str(c.abstract_syntax) == "1.2.840.10008.1.1")
    assert {str(s) for s in verification.transfer_syntax} <= negotiated_syntaxes


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e \".[docs]\")")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
