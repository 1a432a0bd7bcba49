"""Cloud credentials, encrypted at rest (Fernet: AES-128-CBC with HMAC-SHA256, from `cryptography`).

The key is PROMINENCE_CREDENTIALS_KEY (a Fernet key) or `credentials.key` in the data dir, made
on first use with mode 0600. Only the provisioner decrypts, when it builds a cloud's driver or
configures a node; nothing shows credentials back (DESIGN.md: write-only).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from schema.errors import DomainError

MAX_CREDENTIALS_BYTES = 64 * 1024


class CredentialError(DomainError):
    pass


class CredentialBox:
    def __init__(self, key: bytes):
        try:
            self._fernet = Fernet(key)
        except ValueError:
            raise CredentialError("the credentials key (PROMINENCE_CREDENTIALS_KEY or credentials.key in the data "
                                  "dir) is not a Fernet key: 32 url-safe base64-encoded bytes") from None

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> CredentialBox:
        if env := os.environ.get("PROMINENCE_CREDENTIALS_KEY"):
            return cls(env.encode())
        path = Path(data_dir) / "credentials.key"
        if not path.exists():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def seal(self, credentials: dict[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(credentials).encode()).decode()

    def open(self, sealed: str | None) -> dict[str, Any]:
        if not sealed:
            return {}
        try:
            return json.loads(self._fernet.decrypt(sealed.encode()))
        except InvalidToken:
            raise CredentialError("the cloud's credentials cannot be decrypted with this server's key") from None


def check_credentials(credentials: Any) -> dict[str, str]:
    """A mapping of names to strings (key, secret, ssh_private_key, ...); errors never quote values."""
    if not isinstance(credentials, dict) or not credentials:
        raise ValueError("credentials must be a non-empty mapping of names to strings")
    for name, value in credentials.items():
        if not isinstance(name, str) or not name.replace("_", "").isalnum() or len(name) > 64:
            raise ValueError("credentials: names must be letters, digits and _")
        if not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"credentials.{name} must be a string without NUL characters")
    if len(json.dumps(credentials)) > MAX_CREDENTIALS_BYTES:
        raise ValueError(f"credentials must be under {MAX_CREDENTIALS_BYTES} bytes")
    return credentials
