"""Notifications in GraphQL: the key that signs the caller's webhooks (docs/graphql.md)."""
from __future__ import annotations

import strawberry

from gateway.graphql.context import caller, services
from gateway.services.notify import SIGNATURE_HEADER


@strawberry.type
class NotificationQueries:
    @strawberry.field(description=f"The caller's webhook secret: each webhook notification of the caller's jobs "
                                  f"carries `{SIGNATURE_HEADER}: sha256=<hex HMAC-SHA256 of the request body with "
                                  "this secret as the key>`. It is derived from the server's secret and the "
                                  "username, so it stays the same until the server's secret changes")
    async def webhook_secret(self, info: strawberry.Info) -> str:
        who = await caller(info)
        return services(info).notifier.webhook_secret(who.username)
