"""Capacity and accounting in GraphQL: `resources` and `accounting`, through the same
AccountingService as `GET /v1/resources` and `GET /v1/accounting` (docs/graphql.md, "Resources
and accounting"; docs/api-decisions.md, "/v1/accounting"). Every user may ask; `allUsers` gives an
admin every user, anyone else also the members of their groups (their jobs in those groups);
`byGroup` adds `groups`; only admins asking for all users get the spend of all nodes (`spend`)."""
from __future__ import annotations

import datetime

import strawberry
from anyio import to_thread

from gateway.graphql.context import caller, services
from gateway.services.accounting import CloudPotential, Resources, SiteResources, Usage


@strawberry.type(description="Cpus and memory")
class Capacity:
    cpus: int
    memory: float = strawberry.field(description="GB, whole (a Float: it may pass GraphQL's 32-bit Int)")


@strawberry.type(description="The ready nodes of one site: their size, and what the jobs given to them leave free")
class SiteCapacity:
    site: str = strawberry.field(description="The nodes' site (their cloud's name where it has none)")
    capacity: Capacity
    free: Capacity
    nodes: int

    @classmethod
    def of(cls, site: SiteResources) -> SiteCapacity:
        return cls(site=site.site, nodes=site.nodes,
                   capacity=Capacity(cpus=site.capacity.cpus, memory=site.capacity.memory),
                   free=Capacity(cpus=site.free.cpus, memory=site.free.memory))


@strawberry.type(description="What an enabled cloud could still create within its quotas (null: no limit)")
class PotentialCapacity:
    cloud: str
    site: str
    instances: int | None = strawberry.field(description="More nodes it may create")
    cpus: int | None
    memory: float | None = strawberry.field(description="GB, whole")

    @classmethod
    def of(cls, cloud: CloudPotential) -> PotentialCapacity:
        return cls(cloud=cloud.cloud, site=cloud.site, instances=cloud.instances, cpus=cloud.cpus,
                   memory=cloud.memory)


@strawberry.type(description="Capacity now: the existing nodes by site (most free cpus first), and what the "
                             "clouds could still add")
class ResourcesView:
    existing: list[SiteCapacity]
    potential: list[PotentialCapacity]

    @classmethod
    def of(cls, found: Resources) -> ResourcesView:
        return cls(existing=[SiteCapacity.of(s) for s in found.existing],
                   potential=[PotentialCapacity.of(p) for p in found.potential])


@strawberry.type(description="One user's usage in the window")
class UserUsage:
    user: str
    number_of_jobs: int = strawberry.field(description="Jobs that ran and ended in the window")
    cpu_time: float = strawberry.field(description="Hours of cpu time their tasks reported")
    wall_time: float = strawberry.field(description="Hours from each job's start to its end, times its cpus")
    cloud_spend: float = strawberry.field(description="The price of the node time their jobs held in the window: "
                                                      "each node's hourly price times the share of its cpus held")


@strawberry.type(description="One group's usage in the window: the jobs submitted with it (by a token holding "
                             "it), whoever's; a job submitted with several groups counts in each")
class GroupUsage:
    group: str
    number_of_jobs: int = strawberry.field(description="Jobs that ran and ended in the window")
    cpu_time: float = strawberry.field(description="Hours of cpu time their tasks reported")
    wall_time: float = strawberry.field(description="Hours from each job's start to its end, times its cpus")
    cloud_spend: float = strawberry.field(description="The price of the node time these jobs held in the window")


@strawberry.type(description="All nodes' spend in the window")
class CloudSpend:
    total: float = strawberry.field(description="Every node's hourly price times its hours in the window")
    attributed: float = strawberry.field(description="What jobs held (the sum of the users' cloudSpend)")
    idle: float = strawberry.field(description="The rest: nodes booting, or with cpus no job held")


@strawberry.type(description="Usage from start to end, both whole days (UTC)")
class Accounting:
    start: datetime.date
    end: datetime.date
    users: list[UserUsage] = strawberry.field(description="By name: the caller only; with allUsers, for an admin "
                                                          "everyone with jobs or spend in the window, for anyone "
                                                          "else also the users whose jobs were submitted with one "
                                                          "of the caller's groups (those jobs only)")
    groups: list[GroupUsage] | None = strawberry.field(description="With byGroup, by name: each of the caller's "
                                                                   "groups (an admin's allUsers: every group with "
                                                                   "jobs or spend in the window)")
    spend: CloudSpend | None = strawberry.field(description="With allUsers, for admins only")

    @classmethod
    def of(cls, usage: Usage) -> Accounting:
        spend = usage.spend
        return cls(start=usage.start, end=usage.end,
                   users=[UserUsage(user=name, number_of_jobs=u.number_of_jobs, cpu_time=u.cpu_time,
                                    wall_time=u.wall_time, cloud_spend=u.cloud_spend)
                          for name, u in usage.users.items()],
                   groups=None if usage.groups is None else [
                       GroupUsage(group=name, number_of_jobs=g.number_of_jobs, cpu_time=g.cpu_time,
                                  wall_time=g.wall_time, cloud_spend=g.cloud_spend) for name, g in usage.groups.items()],
                   spend=CloudSpend(total=spend.total, attributed=spend.attributed, idle=spend.idle) if spend else None)


@strawberry.type
class UsageQueries:
    @strawberry.field(description="Capacity and what is free now, as `prominence resources` shows it")
    async def resources(self, info: strawberry.Info) -> ResourcesView:
        await caller(info)
        return ResourcesView.of(await to_thread.run_sync(services(info).accounting.resources))

    @strawberry.field(description="Usage from start to end (whole days, UTC): jobs that ran and ended then, and the "
                                  "spend of node time then. allUsers: for admins every user and all nodes' spend, "
                                  "for others also the members of their groups. byGroup: usage per group")
    async def accounting(self, info: strawberry.Info, start: datetime.date, end: datetime.date,
                         all_users: bool = False, by_group: bool = False) -> Accounting:
        who = await caller(info)
        return Accounting.of(await to_thread.run_sync(services(info).accounting.usage, who, start, end, all_users,
                                                      by_group))
