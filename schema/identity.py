"""Tokens (DESIGN.md 3.2): HS256 JWTs signed with the service's secret, and who they stand for.

Three kinds share one secret: user tokens (`prominence-server token create`), job tokens (given
to a running job as PROMINENCE_TOKEN, acting as the job's user without admin rights, only while
that job runs that attempt: the gateway checks the job's row on every use) and node tokens (given
to a node's agent, valid only for that node). The gateway verifies them; the
provisioner issues node tokens when it creates a node.
"""
import math
import re
import time
from dataclasses import dataclass
from functools import lru_cache

import jwt

from schema.errors import InvalidInput


ALGORITHM = "HS256"


class InvalidToken(Exception):
    """Missing, malformed, expired or badly signed."""


@dataclass(frozen=True)
class Identity:
    username: str
    groups: tuple[str, ...] = ()
    email: str | None = None
    admin: bool = False
    job_id: int | None = None  # set for a job token
    attempt: int | None = None  # a job token's attempt: the token dies with it
    node_id: int | None = None  # set for a node token (username is then "node-<id>")


MAX_TOKEN_DAYS = 3650
# Names end up in SQL comparisons and storage paths (uploads/<user>/...): no NUL, blank or slash.
_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,200}@[^@\s\x00-\x1f\x7f]{1,200}")


def check_token_claims(username: str, groups: list[str], email: str | None, days: float) -> None:
    """What a user token may say (`token create`, GraphQL's createToken); InvalidInput naming the
    field otherwise."""
    for field, name in (("username", username), *((f"groups[{i}]", group) for i, group in enumerate(groups))):
        if not _TOKEN_NAME.fullmatch(name):
            raise InvalidInput(f"{field}: must be 1 to 128 letters, digits and . _ @ + -, starting with a letter "
                               "or digit")
    if email is not None and not _EMAIL.fullmatch(email):
        raise InvalidInput("email: must be an e-mail address")
    if not (math.isfinite(days) and 0 < days <= MAX_TOKEN_DAYS):
        raise InvalidInput(f"days: must be more than 0 and at most {MAX_TOKEN_DAYS}")


class TokenAuthority:
    def __init__(self, secret: bytes):
        self._secret = secret
        # Verifying a signature costs more than the rest of a small request; a token that verified
        # once stays valid until its `exp`, which is checked again on every use.
        self._verified = lru_cache(maxsize=4096)(self._decode)

    def issue(self, username: str, groups: tuple[str, ...] = (), email: str | None = None,
              admin: bool = False, days: float = 30, **extra: int) -> str:
        now = int(time.time())
        claims = {"sub": username, "preferred_username": username, "groups": list(groups),
                  "iat": now, "exp": now + int(days * 86400), **extra}
        if email:
            claims["email"] = email
        if admin:
            claims["admin"] = True
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def issue_job_token(self, job_id: int, attempt: int, username: str, groups: tuple[str, ...],
                        lifetime_s: float) -> str:
        return self.issue(username, groups, days=lifetime_s / 86400, job=job_id, attempt=attempt)

    def issue_node_token(self, node_id: int, days: float = 365) -> str:
        return self.issue(f"node-{node_id}", days=days, node=node_id)

    def _decode(self, token: str) -> tuple[Identity, int]:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], options={"require": ["exp"]})
        except jwt.PyJWTError:
            raise InvalidToken() from None
        username = claims.get("preferred_username") or claims.get("sub")
        groups = claims.get("groups") or ()
        job, attempt, node = claims.get("job"), claims.get("attempt"), claims.get("node")
        if (not isinstance(username, str) or not username or not isinstance(groups, (list, tuple))
                or not all(isinstance(n, (int, type(None))) for n in (job, attempt, node))
                or (job is None) != (attempt is None)):  # a job token without its attempt is refused
            raise InvalidToken()
        identity = Identity(username=username, groups=tuple(str(g) for g in groups),
                            email=claims.get("email"), admin=claims.get("admin") is True and job is None,
                            job_id=job, attempt=attempt, node_id=node)
        return identity, int(claims["exp"])

    def verify(self, authorization: str | None) -> Identity:
        """The identity behind an `Authorization: Bearer <jwt>` header; InvalidToken otherwise."""
        return self.verify_until(authorization)[0]

    def verify_until(self, authorization: str | None) -> tuple[Identity, int]:
        """verify(), and when the token expires (epoch seconds): a long-lived connection (a GraphQL
        subscription) ends then."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken()
        identity, expiry = self._verified(token.strip())
        if expiry <= time.time():
            raise InvalidToken()
        return identity, expiry
