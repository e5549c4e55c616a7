"""Shared by tests/containers: the compose files and a YAML loader for compose's merge tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
CI_OVERRIDE = REPO / "deploy" / "ci" / "compose.ci.yml"


class OverrideValue:
    """A value tagged `!override` (or `!reset`) in a compose override file."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag = tag
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> OverrideValue:
    if isinstance(node, yaml.SequenceNode):
        value: Any = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return OverrideValue(node.tag, value)


_ComposeLoader.add_constructor("!override", _tagged)
_ComposeLoader.add_constructor("!reset", _tagged)


def load_compose(path: Path) -> dict[str, Any]:
    """A compose file as a dict; `!override`/`!reset` values become OverrideValue."""
    data = yaml.load(path.read_text(), Loader=_ComposeLoader)
    assert isinstance(data, dict)
    return data
