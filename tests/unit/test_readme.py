"""The README's settings table lists every setting, so docs and code cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from shared.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`TRAINYARD_([A-Z0-9_]+)`", README.read_text()))
    assert documented == set(Settings.model_fields)
