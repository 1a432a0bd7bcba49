"""Capacity and accounting: what `GET /v1/resources` and `GET /v1/accounting` show (and GraphQL's
`resources` and `accounting`), read from the nodes and jobs tables in a few aggregate SQL
statements (docs/api-decisions.md, "Resources and accounting").

- Resources: the ready nodes grouped by site (capacity: their size; free: that minus the jobs
  given to them, started or not), and what each enabled cloud could still create within its
  quotas.
- Usage: the jobs that ran and ended in the window, per user (cpu time from the tasks' reported
  cpuTimeUsage, wall time from the job's start to its end times its cpus), and the cloud spend of
  node time within the window, each job paying its share of its node's cpus; the rest is idle.
  By group: the same sums over the jobs submitted with each group (`jobs.owner_groups`, the
  submitting token's groups), a job with several groups counting in each.
"""
from __future__ import annotations

import calendar
import datetime as dt
import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, bindparam, func, select, text

from gateway.services.clouds import CloudService
from schema.db import reading
from schema.enums import JobStatus, NodeState
from schema.errors import InvalidInput
from schema.identity import Identity
from schema.tables import jobs, nodes

DAY_S = 86400
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only; fromisoformat takes more


def parse_date(field: str, raw: str) -> dt.date:
    """A `YYYY-MM-DD` date, else InvalidInput naming the field."""
    problem = InvalidInput(f"{field} must be a date in the form YYYY-MM-DD")
    if not _DATE.fullmatch(raw):
        raise problem
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise problem from None


def window(start: dt.date, end: dt.date) -> tuple[int, int]:
    """Epoch seconds [start 00:00 UTC, the day after end 00:00 UTC): both dates are whole days."""
    if end < start:
        raise InvalidInput("end must not be before start")
    return calendar.timegm(start.timetuple()), calendar.timegm(end.timetuple()) + DAY_S


@dataclass(frozen=True)
class Capacity:
    cpus: int
    memory: int  # GB, whole

    def to_dict(self) -> dict[str, int]:
        return {"cpus": self.cpus, "memory": self.memory}


@dataclass(frozen=True)
class SiteResources:
    site: str
    capacity: Capacity
    free: Capacity
    nodes: int

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity.to_dict(), "free": self.free.to_dict(), "site": self.site,
                "nodes": self.nodes}


@dataclass(frozen=True)
class CloudPotential:
    """What an enabled cloud could still create within its quotas (None: no limit)."""

    cloud: str
    site: str
    instances: int | None
    cpus: int | None
    memory: int | None  # GB, whole

    def to_dict(self) -> dict[str, Any]:
        return {"cloud": self.cloud, "site": self.site, "instances": self.instances, "cpus": self.cpus,
                "memory": self.memory}


@dataclass(frozen=True)
class Resources:
    existing: list[SiteResources]  # by free cpus, most first
    potential: list[CloudPotential]  # by cloud name

    def to_dict(self) -> dict[str, Any]:
        return {"existing": [s.to_dict() for s in self.existing], "potential": [p.to_dict() for p in self.potential]}


@dataclass(frozen=True)
class UserUsage:
    number_of_jobs: int
    cpu_time: float  # hours
    wall_time: float  # hours x cpus
    cloud_spend: float  # the price of the node time its jobs held within the window

    def to_dict(self) -> dict[str, Any]:
        return {"numberOfJobs": self.number_of_jobs, "cpuTime": self.cpu_time, "wallTime": self.wall_time,
                "cloudSpend": self.cloud_spend}


@dataclass(frozen=True)
class Spend:
    """All nodes' spend within the window: what jobs held, and the rest (idle, booting)."""

    total: float
    attributed: float
    idle: float

    def to_dict(self) -> dict[str, float]:
        return {"total": self.total, "attributed": self.attributed, "idle": self.idle}


@dataclass(frozen=True)
class Usage:
    start: dt.date
    end: dt.date
    users: dict[str, UserUsage]  # by name
    spend: Spend | None  # for admins asking for all users
    groups: dict[str, UserUsage] | None = None  # by name, when asked by group

    def to_dict(self) -> dict[str, Any]:
        usage: dict[str, Any] = {"users": {name: u.to_dict() for name, u in self.users.items()}}
        if self.groups is not None:
            usage["groups"] = {name: g.to_dict() for name, g in self.groups.items()}
        if self.spend is not None:
            usage["spend"] = self.spend.to_dict()
        return {"usage": usage}


def _round(value: Any) -> float:
    return round(float(value or 0), 6)


class _Dialect:
    """The few SQL spellings that differ between SQLite and PostgreSQL."""

    def __init__(self, name: str):
        self.postgresql = name == "postgresql"
        self.max = "greatest" if self.postgresql else "max"  # of several values, not an aggregate
        self.min = "least" if self.postgresql else "min"
        # A job's cpu seconds: the sum of its tasks' numeric cpuTimeUsage (provisioner/agent).
        self.cpu_seconds = (
            "(SELECT coalesce(sum((t -> 'cpuTimeUsage')::text::float8), 0) FROM jsonb_array_elements("
            "CASE WHEN jsonb_typeof(jobs.execution -> 'tasks') = 'array' THEN jobs.execution -> 'tasks' "
            "ELSE '[]'::jsonb END) AS t WHERE jsonb_typeof(t -> 'cpuTimeUsage') = 'number')"
            if self.postgresql else
            "(SELECT total(json_extract(t.value, '$.cpuTimeUsage')) FROM json_each(jobs.execution, '$.tasks') AS t "
            "WHERE t.type = 'object' AND json_type(t.value, '$.cpuTimeUsage') IN ('integer', 'real'))")
        # The groups a job was submitted with (jobs.owner_groups, a JSON list), one row each as `<alias>.value`.
        self._each = ("jsonb_array_elements_text(jobs.owner_groups) AS {0}(value)" if self.postgresql
                      else "json_each(jobs.owner_groups) AS {0}")

    def each(self, alias: str) -> str:
        return self._each.format(alias)

    def join_each(self, alias: str) -> str:
        return f" CROSS JOIN LATERAL {self.each(alias)}" if self.postgresql else f" JOIN {self.each(alias)}"


class AccountingService:
    def __init__(self, engine: Engine, clouds: CloudService):
        self._engine = engine
        self._clouds = clouds
        self._sql = _Dialect(engine.dialect.name)

    # -- resources ------------------------------------------------------------------------------

    def resources(self) -> Resources:
        """Existing: the ready nodes by site (a node of a cloud without a site: the cloud's name).
        Free: each node's size minus the jobs given to it, started or not (never below 0).
        Potential: each enabled cloud's quota left, bounded by its biggest flavour times the
        instances left."""
        given = and_(jobs.c.node_id == nodes.c.id, jobs.c.status.in_((JobStatus.IDLE, JobStatus.RUNNING)))
        query = (select(nodes.c.id, nodes.c.site, nodes.c.cloud, nodes.c.cpus, nodes.c.memory_mb,
                        func.coalesce(func.sum(jobs.c.cpus), 0).label("used_cpus"),
                        func.coalesce(func.sum(jobs.c.memory_mb), 0).label("used_memory_mb"))
                 .select_from(nodes.outerjoin(jobs, given)).where(nodes.c.state == NodeState.READY)
                 .group_by(nodes.c.id, nodes.c.site, nodes.c.cloud, nodes.c.cpus, nodes.c.memory_mb))
        with reading(self._engine) as connection:
            rows = connection.execute(query).all()
        sites: dict[str, list[int]] = {}  # site: [nodes, cpus, memory MB, free cpus, free memory MB]
        for row in rows:
            totals = sites.setdefault(row.site or row.cloud, [0, 0, 0, 0, 0])
            for index, value in enumerate((1, row.cpus, row.memory_mb, max(0, row.cpus - int(row.used_cpus)),
                                           max(0, row.memory_mb - int(row.used_memory_mb)))):
                totals[index] += value
        existing = sorted((SiteResources(site, Capacity(cpus, memory // 1024), Capacity(free_cpus, free_memory // 1024),
                                         count)
                           for site, (count, cpus, memory, free_cpus, free_memory) in sites.items()),
                          key=lambda s: (-s.free.cpus, -s.free.memory, s.site))
        return Resources(existing, self._potential())

    def _potential(self) -> list[CloudPotential]:
        found = []
        for view in self._clouds.list():
            spec = view.spec
            if not spec.enabled:
                continue
            instances = None if spec.max_instances is None else max(0, spec.max_instances - view.instances)
            cpus = None if spec.max_cpus is None else max(0, spec.max_cpus - view.cpus)
            memory_mb = None if spec.max_memory_mb is None else max(0, spec.max_memory_mb - view.memory_mb)
            if instances is not None:  # at most that many VMs of its biggest flavour
                biggest_cpus = max(f.cpus for f in spec.flavours) * instances
                biggest_memory = max(f.memory_mb for f in spec.flavours) * instances
                cpus = biggest_cpus if cpus is None else min(cpus, biggest_cpus)
                memory_mb = biggest_memory if memory_mb is None else min(memory_mb, biggest_memory)
            found.append(CloudPotential(spec.name, spec.site or spec.name, instances, cpus,
                                        None if memory_mb is None else memory_mb // 1024))
        return found

    # -- usage ----------------------------------------------------------------------------------

    def usage(self, identity: Identity, start: dt.date, end: dt.date, all_users: bool = False,
              by_group: bool = False) -> Usage:
        """Usage from `start` to `end`, both whole days (UTC). Jobs counted: those that started and
        ended in the window. Spend: node time within the window.

        Users: the caller's own entry (always there, zero without jobs); with `all_users`, for an
        admin every user with jobs or spend in the window, for anyone else also the members of the
        caller's groups (users whose jobs were submitted with one of them), counting only those
        jobs. Groups (`by_group`): each of the caller's groups (an admin's `all_users`: every
        group with jobs or spend in the window), counting every job submitted with it, whoever's;
        a job submitted with several groups counts in each."""
        lo, hi = window(start, end)
        everyone = all_users and identity.admin
        mine = tuple(dict.fromkeys(identity.groups))
        now = time.time()
        sql = self._sql
        in_mine = f"EXISTS (SELECT 1 FROM {sql.each('m')} WHERE m.value IN :groups)"
        if everyone:
            scope = ""
        elif all_users and mine:  # the caller's jobs, and the others' submitted with one of the caller's groups
            scope = f" AND (jobs.owner = :owner OR {in_mine})"
        else:
            scope = " AND jobs.owner = :owner"
        params: dict[str, Any] = {"lo": lo, "hi": hi, "now": now, "owner": identity.username,
                                  "idle": JobStatus.IDLE.value, "groups": list(mine)}
        groups_param = bindparam("groups", expanding=True)
        counted_from = ("FROM jobs WHERE jobs.end_time >= :lo AND jobs.end_time < :hi AND jobs.start_time IS NOT NULL")
        sums = (f"count(*) AS number, coalesce(sum({sql.cpu_seconds}), 0) AS cpu_s, "
                f"coalesce(sum({sql.max}(jobs.end_time - jobs.start_time, 0) * jobs.cpus), 0) AS wall_s ")
        counted = text(f"SELECT jobs.owner AS who, {sums}{counted_from}{scope} GROUP BY jobs.owner")
        # Each job holds its cpus of its node from its start (not before the node was created, nor
        # the window began) to its end (or now; not after the node left the pool, nor the window
        # ended); a node's cpu costs its price / its cpus per hour.
        held = (f"{sql.max}({sql.min}(coalesce(jobs.end_time, :now), coalesce(nodes.ended_at, :now), :hi) "
                f"- {sql.max}(jobs.start_time, nodes.created_at, :lo), 0)")
        spend_sum = f"sum({held} * {sql.min}(jobs.cpus, nodes.cpus) * nodes.price / nodes.cpus) AS spend_s "
        spend_where = ("WHERE nodes.created_at < :hi AND coalesce(nodes.ended_at, :now) > :lo AND nodes.price > 0 "
                       "AND nodes.cpus > 0 AND jobs.status <> :idle AND jobs.start_time IS NOT NULL "
                       "AND jobs.start_time < :hi AND coalesce(jobs.end_time, :now) > :lo")
        attributed = text(f"SELECT jobs.owner AS who, {spend_sum}FROM nodes JOIN jobs ON jobs.node_id = nodes.id "
                          f"{spend_where}{scope} GROUP BY jobs.owner")
        # By group: a job counts in each group it was submitted with (one row per group of the job).
        group_scope = "" if everyone else " AND g.value IN :groups"
        counted_groups = text(f"SELECT g.value AS who, {sums}FROM jobs{sql.join_each('g')} "
                              f"{counted_from.removeprefix('FROM jobs ')}{group_scope} GROUP BY g.value")
        attributed_groups = text(f"SELECT g.value AS who, {spend_sum}FROM nodes JOIN jobs ON jobs.node_id = nodes.id"
                                 f"{sql.join_each('g')} {spend_where}{group_scope} GROUP BY g.value")
        if "IN :groups" in scope:
            counted, attributed = counted.bindparams(groups_param), attributed.bindparams(groups_param)
        if group_scope:
            counted_groups = counted_groups.bindparams(groups_param)
            attributed_groups = attributed_groups.bindparams(groups_param)
        total = text(
            f"SELECT coalesce(sum({sql.max}({sql.min}(coalesce(ended_at, :now), :hi) - {sql.max}(created_at, :lo), 0)"
            " * price), 0) FROM nodes WHERE created_at < :hi AND coalesce(ended_at, :now) > :lo AND price > 0")
        ask_groups = by_group and (everyone or mine)
        with reading(self._engine) as connection:
            used = {r.who: r for r in connection.execute(counted, params)}
            spent = {r.who: float(r.spend_s or 0) for r in connection.execute(attributed, params)}
            total_s = float(connection.execute(total, params).scalar_one() or 0) if everyone else None
            if ask_groups:
                group_used = {r.who: r for r in connection.execute(counted_groups, params)}
                group_spent = {r.who: float(r.spend_s or 0) for r in connection.execute(attributed_groups, params)}
        users = _entries(used, spent, set() if everyone else {identity.username})
        groups = None
        if by_group:
            groups = _entries(group_used, group_spent, set() if everyone else set(mine)) if ask_groups else {}
        spend = None
        if total_s is not None:
            shared = sum(spent.values())
            spend = Spend(_round(total_s / 3600), _round(shared / 3600), _round(max(0.0, total_s - shared) / 3600))
        return Usage(start, end, users, spend, groups)


def _entries(used: dict[str, Any], spent: dict[str, float], always: set[str]) -> dict[str, UserUsage]:
    """By name: those with jobs counted or spend, and `always` (zeros without either)."""
    entries = {}
    for name in sorted(set(used) | {name for name, s in spent.items() if s > 0} | always):
        row = used.get(name)
        entries[name] = UserUsage(int(row.number) if row else 0, _round(float(row.cpu_s) / 3600) if row else 0.0,
                                  _round(float(row.wall_s) / 3600) if row else 0.0, _round(spent.get(name, 0.0) / 3600))
    return entries
