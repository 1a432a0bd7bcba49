"""Clouds in GraphQL. Anyone who reaches a cloud (a job's owner, through the node the job runs
on) reads where it is: its name, provider, site and region (what `placement` names). Everything
else is for admins only (AdminOnly): a FORBIDDEN error for anyone else. No field holds
credentials, only whether the cloud has them."""
from __future__ import annotations

import datetime
from collections.abc import Sequence

import strawberry
from anyio import to_thread
from strawberry.dataloader import DataLoader
from strawberry.scalars import JSON

from gateway.graphql.context import AdminOnly, loader, services
from gateway.graphql.jobs import time_of
from gateway.services.clouds import CloudView


def admin_only(description: str | None = None):
    """A field only admins may read (nullable: refusing it leaves the rest of the answer)."""
    return strawberry.field(description=description, permission_classes=[AdminOnly])


@strawberry.type(description="A machine size a cloud offers, with its hourly price")
class Flavour:
    name: str
    cpus: int
    memory_mb: int
    disk_gb: int
    price: float = strawberry.field(description="Per hour")


@strawberry.type(description="What a cloud's live nodes use, against its quotas (a null maximum: no limit)")
class CloudUsage:
    instances: int
    max_instances: int | None
    cpus: int
    max_cpus: int | None
    memory_mb: float = strawberry.field(description="A Float: a quota may pass GraphQL's 32-bit Int")
    max_memory_mb: float | None
    booting: int = strawberry.field(description="Nodes being created or configured")
    max_booting: int = strawberry.field(description="How many nodes it may boot at once")


@strawberry.type(description="Where nodes are created: a libcloud provider with an admin's settings")
class Cloud:
    name: str
    provider: str = strawberry.field(description="The libcloud provider: local, ssh, ec2, openstack, gce, ...")
    site: str = strawberry.field(description="For placement requirements and preferences")
    region: str = strawberry.field(description="For placement requirements and preferences")
    enabled: bool | None = admin_only("Whether the provisioner may create nodes on it")
    has_credentials: bool | None = admin_only("Whether its credentials are set (they are never shown)")
    health: float | None = admin_only("1 without recent launch failures, towards 0 as they pile up; recovers "
                                      "with time")
    penalty_box_until: datetime.datetime | None = admin_only("While recent failures keep it out of use: until when")
    usage: CloudUsage | None = admin_only()
    spend: float | None = admin_only("So far: each of its nodes' hourly price times its hours")
    flavours: list[Flavour] | None = admin_only()
    settings: JSON | None = admin_only("All its settings, as addCloud and updateCloud take them (the fields of "
                                       "a cloud file: docs/clouds.md)")

    @classmethod
    def of(cls, view: CloudView) -> Cloud:
        spec = view.spec
        return cls(name=spec.name, provider=spec.provider, site=spec.site, region=spec.region, enabled=spec.enabled,
                   has_credentials=view.has_credentials, health=round(view.health, 3),
                   penalty_box_until=time_of(view.penalty_until),
                   usage=CloudUsage(instances=view.instances, max_instances=spec.max_instances, cpus=view.cpus,
                                    max_cpus=spec.max_cpus, memory_mb=view.memory_mb,
                                    max_memory_mb=spec.max_memory_mb, booting=view.booting,
                                    max_booting=spec.max_booting),
                   spend=round(view.spend, 6),
                   flavours=[Flavour(name=f.name, cpus=f.cpus, memory_mb=f.memory_mb, disk_gb=f.disk_gb,
                                     price=f.price) for f in spec.flavours],
                   settings=spec.model_dump())


def clouds_by_name(info: strawberry.Info) -> DataLoader:
    """The request's loader of clouds by name (None for one that was removed): however many
    nodes ask for their cloud, one pass over the database."""
    clouds = services(info).clouds

    async def load(names: Sequence[str]) -> list[Cloud | None]:
        found = await to_thread.run_sync(clouds.by_name, list(names))
        return [Cloud.of(found[name]) if name in found else None for name in names]
    return loader(info, "clouds_by_name", load)
