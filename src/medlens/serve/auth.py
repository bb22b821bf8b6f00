"""API tokens with roles. The tokens file keeps only SHA-256 hashes, so a leaked file opens nothing.

Roles: ``viewer`` reads the worklist and results; ``radiologist`` also records
reads; ``admin`` may do everything (audit log, all uploads); ``sender`` may
only upload studies (a PACS or modality account, which should not read results).

    medlens token add alice --role radiologist --tokens tokens.json   # prints the token once
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from medlens.errors import ConfigError

ROLES = ("viewer", "radiologist", "admin", "sender")
_RANK = {"viewer": 1, "radiologist": 2, "admin": 3}


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def may(self, needed: str) -> bool:
        if needed == "sender":
            return self.role in ("sender", "admin")
        return _RANK.get(self.role, 0) >= _RANK[needed]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: str | Path) -> dict[str, User]:
    """token hash -> user, from a tokens file written by :func:`add_token`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"--tokens {path}: no such file; create one with `medlens token add NAME --role ROLE --tokens {path}`"
        )
    try:
        entries = json.loads(path.read_text())["users"]
        users = {e["token_sha256"]: User(e["name"], e["role"]) for e in entries}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a medlens tokens file ({exc}); recreate it with `medlens token add`") from exc
    bad = [u.role for u in users.values() if u.role not in ROLES]
    if bad:
        raise ConfigError(f"{path}: unknown role {bad[0]!r}; roles are {', '.join(ROLES)}")
    return users


def add_token(path: str | Path, name: str, role: str) -> str:
    """Add a user with a new random token (returned once; only its hash is stored)."""
    if role not in ROLES:
        raise ConfigError(f"--role {role!r}: choose one of {', '.join(ROLES)}")
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {"users": []}
    token = secrets.token_urlsafe(32)
    data["users"].append({"name": name, "role": role, "token_sha256": _hash(token)})
    path.write_text(json.dumps(data, indent=1))
    path.chmod(0o600)
    return token


def user_for(token: str | None, users: dict[str, User]) -> User | None:
    if not token:
        return None
    return users.get(_hash(token))
