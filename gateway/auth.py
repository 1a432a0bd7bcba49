"""Bearer JWTs (DESIGN.md 3.2): the built-in HS256 issuer and the identity a token carries."""
import time
from dataclasses import dataclass
from functools import lru_cache

import jwt

from gateway.errors import Unauthorized

ALGORITHM = "HS256"


@dataclass(frozen=True)
class Identity:
    username: str
    groups: tuple[str, ...] = ()
    email: str | None = None
    admin: bool = False


class TokenAuthority:
    def __init__(self, secret: bytes):
        self._secret = secret
        # Verifying a signature costs more than the rest of a small request; a token that verified
        # once stays valid until its `exp`, which is checked again on every use.
        self._verified = lru_cache(maxsize=4096)(self._decode)

    def issue(self, username: str, groups: tuple[str, ...] = (), email: str | None = None,
              admin: bool = False, days: float = 30) -> str:
        now = int(time.time())
        claims = {"sub": username, "preferred_username": username, "groups": list(groups),
                  "iat": now, "exp": now + int(days * 86400)}
        if email:
            claims["email"] = email
        if admin:
            claims["admin"] = True
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def _decode(self, token: str) -> tuple[Identity, int]:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], options={"require": ["exp"]})
        except jwt.PyJWTError:
            raise Unauthorized() from None
        username = claims.get("preferred_username") or claims.get("sub")
        groups = claims.get("groups") or ()
        if not isinstance(username, str) or not username or not isinstance(groups, (list, tuple)):
            raise Unauthorized()
        identity = Identity(username=username, groups=tuple(str(g) for g in groups),
                            email=claims.get("email"), admin=claims.get("admin") is True)
        return identity, int(claims["exp"])

    def verify(self, authorization: str | None) -> Identity:
        """The identity behind an `Authorization: Bearer <jwt>` header; Unauthorized otherwise."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized()
        identity, expiry = self._verified(token.strip())
        if expiry <= time.time():
            raise Unauthorized()
        return identity
