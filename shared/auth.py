"""Bearer-token authentication: who is calling, and may they see everything (admin)?

Tokens are configured as `owner:token[:admin]` entries (TRAINYARD_API_TOKENS, comma-separated)
or, better for production, a file of `owner:sha256-of-token[:admin]` lines
(TRAINYARD_API_TOKENS_FILE), so the server never stores a usable token. Comparison is
constant-time (secrets.compare_digest) against every entry."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from shared.config import Settings

OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    owner: str
    admin: bool = False

    def can_see(self, owner: str | None) -> bool:
        return self.admin or owner == self.owner


@dataclass(frozen=True)
class _Entry:
    owner: str
    digest: str  # sha256 hex of the token
    admin: bool


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _parse(line: str, hashed: bool) -> _Entry:
    parts = line.strip().split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "admin"):
        raise ValueError("each token entry is owner:token or owner:token:admin")
    owner, secret = parts[0], parts[1]
    if not OWNER.match(owner) or not secret:
        raise ValueError(f"bad token entry for owner {owner!r}")
    if hashed and not re.fullmatch(r"[0-9a-f]{64}", secret):
        raise ValueError(f"owner {owner!r}: a tokens file holds sha256 hex digests")
    return _Entry(owner, secret if hashed else token_digest(secret), len(parts) == 3)


class TokenTable:
    """The configured tokens; authenticate() maps a presented token to its Principal."""

    def __init__(self, entries: list[_Entry]) -> None:
        self.entries = entries

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenTable:
        entries = [_parse(e, hashed=False) for e in settings.API_TOKENS.split(",") if e.strip()]
        if settings.API_TOKENS_FILE:
            lines = Path(settings.API_TOKENS_FILE).read_text().splitlines()
            entries += [
                _parse(line, hashed=True)
                for line in lines
                if line.strip() and not line.startswith("#")
            ]
        return cls(entries)

    def authenticate(self, token: str | None) -> Principal | None:
        if not token:
            return None
        digest = token_digest(token)
        found: Principal | None = None
        for entry in self.entries:  # no early exit: the time taken does not depend on the match
            if secrets.compare_digest(entry.digest, digest):
                found = Principal(entry.owner, entry.admin)
        return found


def new_token() -> str:
    return "ty_" + secrets.token_urlsafe(24)
