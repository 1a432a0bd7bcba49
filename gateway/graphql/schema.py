"""The GraphQL schema, put together from one module per concept. Resolvers only translate: the
services decide, and their domain errors (schema/errors.py) reach clients as errors with a `code`
in their extensions. Any other error is masked ("Unexpected error."): its details stay in the
server's log."""
from __future__ import annotations

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors
from strawberry.tools import merge_types

from gateway.graphql.admin import AdminMutations, AdminQueries
from gateway.graphql.context import caller
from gateway.graphql.data import DataMutations, DataQueries
from gateway.graphql.execution import FastExecutionContext
from gateway.graphql.jobs import JobCounts, JobMutations, JobQueries
from gateway.graphql.kv import KvMutations, KvQueries
from gateway.graphql.limits import limits
from gateway.graphql.notifications import NotificationQueries
from gateway.graphql.subscriptions import Subscription
from gateway.graphql.usage import UsageQueries
from gateway.graphql.workflows import WorkflowMutations, WorkflowQueries
from schema.errors import DomainError
from schema.identity import Identity


@strawberry.type(description="The caller")
class Viewer:
    name: str
    groups: list[str]
    admin: bool
    identity: strawberry.Private[Identity]

    @strawberry.field(description="The caller's jobs counted by status (one field per status, and the total)")
    async def job_counts(self, info: strawberry.Info) -> JobCounts:
        return await JobCounts.of(info, self.identity)


@strawberry.type
class ViewerQueries:
    @strawberry.field(description="The caller, as its token says")
    async def viewer(self, info: strawberry.Info) -> Viewer:
        who = await caller(info)
        return Viewer(name=who.username, groups=list(who.groups), admin=who.admin, identity=who)


Query = merge_types("Query", (ViewerQueries, JobQueries, AdminQueries, KvQueries, UsageQueries, NotificationQueries,
                             DataQueries, WorkflowQueries))
Mutation = merge_types("Mutation", (JobMutations, AdminMutations, KvMutations, DataMutations, WorkflowMutations))


def _masked(error: GraphQLError) -> bool:
    """Errors of the query itself (its syntax, fields, variables) and the services' domain errors
    are the client's to see; anything else is not."""
    return error.original_error is not None and not isinstance(error.original_error, (DomainError, GraphQLError))


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context=None) -> None:
        """Only unexpected errors go to the log (with their traceback): the others are answers."""
        super().process_errors([e for e in errors if _masked(e)], execution_context)


schema = _Schema(query=Query, mutation=Mutation, extensions=[*limits(), lambda: MaskErrors(should_mask_error=_masked)],
                 subscription=Subscription, execution_context_class=FastExecutionContext)
