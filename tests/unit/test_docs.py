"""The project explains itself: every relative link in the docs leads to a file that exists,
inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def markdown_docs() -> list[Path]:
    return [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


def relative_links(text: str) -> list[str]:
    """Link targets outside code blocks that are neither URLs nor in-page anchors."""
    text = FENCE.sub("", text)
    targets = LINK.findall(text) + REFERENCE.findall(text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t, re.IGNORECASE)]


def test_docs_exist() -> None:
    names = {p.name for p in markdown_docs()}
    assert {"book.md", "design.md", "README.md"} <= names


@pytest.mark.parametrize("doc", markdown_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files(doc: Path) -> None:
    broken = [
        target
        for target in relative_links(doc.read_text())
        if not (doc.parent / target.split("#")[0].split("?")[0]).exists()
    ]
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"
    outside = [
        target
        for target in relative_links(doc.read_text())
        if not (doc.parent / target.split("#")[0]).resolve().is_relative_to(ROOT)
    ]
    assert not outside, f"{doc.relative_to(ROOT)} links outside the repository: {outside}"


def test_the_link_finder_sees_links() -> None:
    text = (
        'see [a](docs/a.md#x), ![img](pic.png "t"), [web](https://x.org), [top](#top)\n'
        "[ref]: ../b.md\n```\n[not](in-code.md)\n```\n"
    )
    assert relative_links(text) == ["docs/a.md#x", "pic.png", "../b.md"]
