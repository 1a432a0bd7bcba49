"""Who is behind a request, in one place for every transport (REST /v1 and GraphQL)."""
from __future__ import annotations

from gateway.services.jobs import JobService
from schema.errors import Unauthenticated
from schema.identity import Identity, InvalidToken, TokenAuthority


class Authenticator:
    def __init__(self, tokens: TokenAuthority, jobs: JobService):
        self._tokens = tokens
        self._jobs = jobs

    async def user(self, authorization: str | None) -> Identity:
        """The user (or job, acting as its user) behind an `Authorization: Bearer` header. Node
        tokens are for the agent protocol only; a job token dies with its attempt (finished,
        deleted or requeued)."""
        return (await self.user_until(authorization))[0]

    async def user_until(self, authorization: str | None) -> tuple[Identity, int]:
        """user(), and when its token expires (epoch seconds)."""
        try:
            who, expiry = self._tokens.verify_until(authorization)
        except InvalidToken:
            raise Unauthenticated() from None
        if who.node_id is not None:
            raise Unauthenticated()
        if who.job_id is not None and not await self._jobs.runs(who.job_id, who.attempt, who.username):
            raise Unauthenticated()
        return who, expiry
