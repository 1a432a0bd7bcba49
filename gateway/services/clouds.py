"""Clouds and their nodes as admins manage them: one service layer for `prominence-server cloud
...` / `node ...` and GraphQL's admin queries and mutations. Credentials go in and are never shown
back: views say only whether a cloud has them.

Node actions go through the database, as the provisioner may run in another process: draining
marks a node (the planner deletes it once its jobs are done), deleting takes it out of the pool at
once (the provisioner destroys its VM within a tick)."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine, Row, case, delete, func, insert, select, update

from provisioner.planner import DRAINED, health, penalty_until
from schema.cloudspec import UPDATABLE, CloudSpec, Name
from schema.db import reading
from schema.credentials import CredentialBox, check_credentials
from schema.enums import NODE_BOOTING, NODE_LIVE, JobStatus, NodeState
from schema.errors import Conflict, InvalidInput, InvalidState, NotFound
from schema.jobspec import describe_errors
from schema.lifecycle import leave_pool
from schema.tables import clouds, jobs, nodes

LOCAL = "local"
DELETED_BY_ADMIN = "deleted by an admin"
# Not a retry: the job did not fail, an admin took its node away.
REQUEUED_BY_ADMIN = "Requeued: an admin deleted its node"
# Admins drain and delete nodes in the pool; booting ones are the launcher's until they are ready
# (it moves them on whatever their row says) and fail by their cloud's boot timeouts.
IN_POOL = (NodeState.READY, NodeState.DRAINING)
MAX_NODE_ID = (1 << 63) - 1
_cloud_name = TypeAdapter(Name)


@dataclass(frozen=True)
class CloudView:
    spec: CloudSpec
    has_credentials: bool
    health: float
    penalty_until: float | None
    instances: int  # live nodes
    booting: int
    cpus: int  # of live nodes
    memory_mb: int
    spend: float  # so far, from its nodes' hourly prices

    def to_dict(self) -> dict[str, Any]:
        return {**self.spec.model_dump(), "has_credentials": self.has_credentials, "health": round(self.health, 3),
                "penalty_until": self.penalty_until, "instances": self.instances, "booting": self.booting,
                "cpus_used": self.cpus, "memory_mb_used": self.memory_mb, "spend": round(self.spend, 6)}


@dataclass(frozen=True)
class NodeView:
    id: int
    name: str
    cloud: str
    flavour: str
    state: str
    state_reason: str
    address: str
    cpus: int
    memory_mb: int
    disk_gb: int
    price: float
    created_at: float
    last_heartbeat: float | None
    ended_at: float | None = None  # when it left the pool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _may_exist(name: Any) -> bool:
    """Whether a cloud can have this name: others are not looked up (PostgreSQL refuses a NUL in a
    query, say)."""
    try:
        _cloud_name.validate_python(name)
    except ValidationError:
        return False
    return True


def _known_name(name: Any) -> str:
    if not _may_exist(name):
        raise NotFound(f"No such cloud: {name}")
    return name


def _validate(data: dict[str, Any]) -> CloudSpec:
    try:
        return CloudSpec.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(describe_errors(error, "cloud")) from None


class CloudService:
    def __init__(self, engine: Engine, box: CredentialBox):
        self._engine = engine
        self._box = box

    # -- changes --------------------------------------------------------------------------------

    def add(self, data: dict[str, Any], credentials: dict[str, str] | None = None) -> CloudView:
        spec = _validate(data)
        sealed = self._seal(credentials) if credentials else None
        now = time.time()
        with self._engine.begin() as connection:
            if connection.execute(select(clouds.c.name).where(clouds.c.name == spec.name)).first():
                raise Conflict(f"Cloud {spec.name} already exists")
            connection.execute(insert(clouds).values(**spec.model_dump(), credentials=sealed, failures=[],
                                                     created_at=now, updated_at=now))
        return self.get(spec.name)

    def update(self, name: str, changes: dict[str, Any]) -> CloudView:
        if not isinstance(changes, dict):
            raise InvalidInput("Invalid cloud: the changes must be a mapping of fields to values")
        unknown = sorted(set(changes) - UPDATABLE)
        if unknown:
            raise InvalidInput(f'Invalid cloud: "{unknown[0]}" is not a field that can be changed')
        with self._engine.begin() as connection:
            spec = _validate({**self._spec(connection, name).model_dump(), **changes})
            connection.execute(update(clouds).where(clouds.c.name == name).values(
                **spec.model_dump(exclude={"name"}), updated_at=time.time()))
        return self.get(name)

    def set_enabled(self, name: str, enabled: bool) -> CloudView:
        return self.update(name, {"enabled": enabled})

    def set_credentials(self, name: str, credentials: dict[str, str]) -> None:
        """Sets (or rotates) a cloud's credentials; new VMs and deletions use them at once."""
        with self._engine.begin() as connection:
            self._spec(connection, name)
            sealed = self._seal(credentials)
            connection.execute(update(clouds).where(clouds.c.name == name).values(
                credentials=sealed, updated_at=time.time()))

    def remove(self, name: str) -> None:
        with self._engine.begin() as connection:
            self._spec(connection, name)
            # Nodes being deleted count too: without the cloud, nothing could destroy their VMs.
            live = connection.execute(select(func.count()).select_from(nodes).where(
                nodes.c.cloud == name, nodes.c.state.in_((*NODE_LIVE, NodeState.DELETING)))).scalar_one()
            if live:
                raise Conflict(f"Cloud {name} still has {live} node{'s' if live != 1 else ''} not yet destroyed: "
                               "disable it, and remove it once they are gone")
            connection.execute(delete(clouds).where(clouds.c.name == name))

    def apply(self, documents: list[dict[str, Any]]) -> list[str]:
        """`cloud apply FILE`: each document adds its cloud or updates it to match (a
        `credentials` mapping in a document sets them). All are checked before any is stored."""
        if not isinstance(documents, list) or not all(isinstance(d, dict) for d in documents):
            raise InvalidInput("Invalid cloud file: expected a list of clouds (mappings)")
        checked = []
        for index, document in enumerate(documents):
            document = dict(document)
            credentials = document.pop("credentials", None)
            try:
                spec = _validate(document)
            except InvalidInput as error:
                raise InvalidInput(f"clouds[{index}]: {error.message}") from None
            checked.append((spec, self._seal(credentials) if credentials is not None else None))
        names = [spec.name for spec, _ in checked]
        if len(names) != len(set(names)):
            raise InvalidInput("Invalid cloud file: a cloud name appears twice")
        now, done = time.time(), []
        with self._engine.begin() as connection:
            existing = set(connection.execute(select(clouds.c.name).where(clouds.c.name.in_(names))).scalars())
            for spec, sealed in checked:
                values = spec.model_dump(exclude={"name"}) | ({"credentials": sealed} if sealed else {})
                if spec.name in existing:
                    connection.execute(update(clouds).where(clouds.c.name == spec.name).values(
                        **values, updated_at=now))
                    done.append(f"updated {spec.name}")
                else:
                    connection.execute(insert(clouds).values(name=spec.name, **values, failures=[],
                                                             created_at=now, updated_at=now))
                    done.append(f"added {spec.name}")
        return done

    def ensure_local(self, base_dir: Path, cpus: int | None, memory_mb: int | None,
                     idle_timeout: float | None) -> None:
        """The `local` cloud is a record like the others, made on first start with this machine's
        size; the server's --local-cpus, --local-memory-mb and --idle-timeout change it."""
        from provisioner.drivers.local import machine_cpus, machine_memory_mb

        base_dir.mkdir(parents=True, exist_ok=True)
        total_cpus = cpus or machine_cpus()
        memory = memory_mb or machine_memory_mb()
        disk = max(1, int(shutil.disk_usage(base_dir).free // (1 << 30)))
        sized = {"max_cpus": total_cpus, "max_memory_mb": memory, "flavours": [
            {"name": f"local-{c}cpu", "cpus": c, "memory_mb": memory * c // total_cpus, "disk_gb": disk, "price": 0}
            for c in range(1, total_cpus + 1)]}
        with self._engine.connect() as connection:
            exists = connection.execute(select(clouds.c.name).where(clouds.c.name == LOCAL)).first()
        if exists is None:
            self.add({"name": LOCAL, "provider": "local", "driver_args": {"base_dir": str(base_dir)},
                      "connection": "local", "node_root": str(base_dir), "install_packages": False,
                      "site": LOCAL, "region": LOCAL,
                      **sized, **({"idle_timeout": idle_timeout} if idle_timeout else {})})
            return
        changes = {**(sized if cpus or memory_mb else {}), **({"idle_timeout": idle_timeout} if idle_timeout else {})}
        if changes:
            self.update(LOCAL, changes)

    # -- views ----------------------------------------------------------------------------------

    def get(self, name: str) -> CloudView:
        views = self._views([_known_name(name)])
        if not views:
            raise NotFound(f"No such cloud: {name}")
        return views[0]

    def list(self) -> list[CloudView]:
        return self._views(None)

    def by_name(self, names: list[str]) -> dict[str, CloudView]:
        """The clouds with these names (those that exist), in one pass over the database."""
        return {view.spec.name: view for view in self._views(names)}

    def nodes(self, cloud: str | None = None, include_gone: bool = False) -> list[NodeView]:
        query = select(nodes).order_by(nodes.c.id)
        if cloud is not None:
            if not _may_exist(cloud):
                return []
            query = query.where(nodes.c.cloud == cloud)
        if not include_gone:
            query = query.where(nodes.c.state.in_(NODE_LIVE))
        return self._node_views(query)

    def nodes_by_id(self, ids: list[int]) -> dict[int, NodeView]:
        """The nodes with these ids, gone ones too, in one SQL statement."""
        return {view.id: view for view in self._node_views(select(nodes).where(nodes.c.id.in_(ids)))}

    def jobs_on_nodes(self, node_ids: list[int], owner: str | None = None) -> dict[int, list[Row]]:
        """Each node's jobs (rows of the jobs table): those it was given and has not finished, in
        id order; only `owner`'s when given. One SQL statement."""
        query = select(jobs).where(jobs.c.node_id.in_(node_ids), jobs.c.status.in_((JobStatus.IDLE, JobStatus.RUNNING)))
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        found: dict[int, list[Row]] = {node_id: [] for node_id in node_ids}
        with reading(self._engine) as connection:
            for row in connection.execute(query.order_by(jobs.c.id)):
                found[row.node_id].append(row)
        return found

    def _node_views(self, query) -> list[NodeView]:
        with reading(self._engine) as connection:
            return [NodeView(r.id, r.name, r.cloud, r.flavour, r.state, r.state_reason, r.address, r.cpus,
                             r.memory_mb, r.disk_gb, r.price, r.created_at, r.last_heartbeat, r.ended_at)
                    for r in connection.execute(query)]

    def _node(self, node_id: int) -> NodeView:
        found = self.nodes_by_id([node_id]) if 0 < node_id <= MAX_NODE_ID else {}
        if node_id not in found:
            raise NotFound(f"No such node: {node_id}")
        return found[node_id]

    # -- node actions -----------------------------------------------------------------------------

    def drain_node(self, node_id: int) -> NodeView:
        """The node takes no new jobs (only ready nodes do); the provisioner deletes it once the
        jobs it has are done (planner.DRAINED). Draining a draining node changes nothing."""
        self._node(node_id)
        with self._engine.begin() as connection:
            drained = connection.execute(update(nodes).where(nodes.c.id == node_id, nodes.c.state.in_(IN_POOL))
                                         .values(state=NodeState.DRAINING, state_reason=DRAINED))
            if drained.rowcount == 0:
                self._refuse(connection, node_id, "drained")
        return self._node(node_id)

    def delete_node(self, node_id: int) -> NodeView:
        """At once, in one transaction: the node leaves the pool (deleting, its spend stops) and
        its jobs go back to the queue without counting a retry. The provisioner destroys its VM
        at its next tick (provisioner/service.py)."""
        self._node(node_id)
        with self._engine.begin() as connection:
            if leave_pool(connection, node_id, NodeState.DELETING, DELETED_BY_ADMIN, time.time(), leaving=IN_POOL,
                          jobs_reason=REQUEUED_BY_ADMIN, counts_as_retry=False) is None:
                self._refuse(connection, node_id, "deleted")
        return self._node(node_id)

    @staticmethod
    def _refuse(connection, node_id: int, action: str) -> None:
        """Why the node, not in the pool (any more, or yet), cannot be `action`."""
        state = connection.execute(select(nodes.c.state).where(nodes.c.id == node_id)).scalar_one()
        if state in NODE_BOOTING:
            raise InvalidState(f"Node {node_id} is still booting ({state}): it can be {action} once it is ready")
        raise InvalidState(f"Node {node_id} is {state}: it has left the pool already")

    def _views(self, names: list[str] | None) -> list[CloudView]:
        now = time.time()
        live = nodes.c.state.in_(NODE_LIVE)
        usage = (select(nodes.c.cloud, func.sum(case((live, 1), else_=0)).label("instances"),
                        func.sum(case((nodes.c.state.in_(NODE_BOOTING), 1), else_=0)).label("booting"),
                        func.sum(case((live, nodes.c.cpus), else_=0)).label("cpus"),
                        func.sum(case((live, nodes.c.memory_mb), else_=0)).label("memory_mb"),
                        func.sum(nodes.c.price * (func.coalesce(nodes.c.ended_at, now) - nodes.c.created_at)
                                 ).label("spend_s"))
                 .group_by(nodes.c.cloud))
        query = select(clouds).order_by(clouds.c.name)
        if names is not None:
            names = [name for name in names if _may_exist(name)]
            query = query.where(clouds.c.name.in_(names))
            usage = usage.where(nodes.c.cloud.in_(names))
        with reading(self._engine) as connection:
            rows = connection.execute(query).all()
            used = {r.cloud: r for r in connection.execute(usage)}
        views = []
        for row in rows:
            u = used.get(row.name)
            spec = CloudSpec.model_validate({k: getattr(row, k) for k in CloudSpec.model_fields})
            views.append(CloudView(spec, bool(row.credentials), health(row.failures, now),
                                   penalty_until(row.failures, now), int(u.instances or 0) if u else 0,
                                   int(u.booting or 0) if u else 0, int(u.cpus or 0) if u else 0,
                                   int(u.memory_mb or 0) if u else 0, float(u.spend_s or 0) / 3600 if u else 0.0))
        return views

    def _spec(self, connection, name: str) -> CloudSpec:
        row = connection.execute(select(clouds).where(clouds.c.name == _known_name(name))).first()
        if row is None:
            raise NotFound(f"No such cloud: {name}")
        return CloudSpec.model_validate({k: getattr(row, k) for k in CloudSpec.model_fields})

    def _seal(self, credentials: Any) -> str:
        try:
            return self._box.seal(check_credentials(credentials))
        except ValueError as error:
            raise InvalidInput(f"Invalid credentials: {error}") from None
