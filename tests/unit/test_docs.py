"""The project explains itself: no file points outside the repository for its design or its
models, and every relative link in the docs leads to a file that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Notes that lived outside the repository; what the project needs is in docs/ now.
OUTSIDE = (b"BOOK.md", b"DESIGN.md", b"STYLE.md", b"../shared")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def repository_files() -> list[Path]:
    """Tracked files and new ones git does not ignore, that exist in the work tree."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    paths = {ROOT / name for name in out.decode().split("\0") if name}
    return sorted(p for p in paths if p.is_file())


def markdown_docs() -> list[Path]:
    return [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


def relative_links(text: str) -> list[str]:
    """Link targets outside code blocks that are neither URLs nor in-page anchors."""
    text = FENCE.sub("", text)
    targets = LINK.findall(text) + REFERENCE.findall(text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t, re.IGNORECASE)]


def test_no_file_points_outside_the_repository() -> None:
    me = Path(__file__).resolve()
    found = [
        f"{path.relative_to(ROOT)}: {needle.decode()}"
        for path in repository_files()
        if path.resolve() != me
        for needle in OUTSIDE
        if needle in path.read_bytes()
    ]
    assert not found, "point to docs/ instead:\n" + "\n".join(found)


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


def test_the_link_finder_sees_links() -> None:
    text = (
        'see [a](docs/a.md#x), ![img](pic.png "t"), [web](https://x.org), [top](#top)\n'
        "[ref]: ../b.md\n```\n[not](in-code.md)\n```\n"
    )
    assert relative_links(text) == ["docs/a.md#x", "pic.png", "../b.md"]
