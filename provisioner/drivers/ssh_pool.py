"""The ``ssh`` cloud: a static pool of existing hosts reached over SSH, behind libcloud's NodeDriver.

PROMINENCE's "existing resources" (autoScalingType none): the hosts are there already; "creating"
a node takes a free host whose shape matches the size asked for (one node per host at a time) and
records it, "destroying" it stops the node's agent on the host and removes the node's directory
there (``playbooks/stop.yml`` run by ansible-runner over SSH), then frees the host.

The records live in ``<state dir>/pool.json`` (written atomically, under a lock that holds across
the threads and processes of this machine), so a restarted service finds its nodes and their tags.
The SSH private key is kept in memory only: it reaches ansible as a 0600 file inside each run's
private data dir (``provisioner.configure.run_playbook``), never the state file, logs or errors.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from libcloud.common.base import ConnectionKey
from libcloud.common.types import LibcloudError
from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeLocation, NodeSize
from libcloud.compute.types import NodeState

log = logging.getLogger(__name__)

SSH_PROVIDER = "ssh"
STATE_FILE = "pool.json"
LOCK_FILE = "pool.lock"
# In the message of the error create_node raises when no host of the size is free: the pool's
# quota is used up (callers may match on it, or on NoFreeHostError).
NO_FREE_HOST = "no free host"
DEFAULT_NODE_ROOT = "/var/lib/prominence-node"
STOP_TIMEOUT = 300

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOST_KEYS = {"name", "address", "port", "user", "cpus", "memory_mb", "disk_gb", "node_root", "python_interpreter"}
_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


class NoFreeHostError(LibcloudError):
    """Every host of the size asked for runs a node: a quota-type error (retry later / elsewhere)."""


class _Secret:
    """A string that never shows itself in a repr, a str or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def size_id(cpus: int, memory_mb: int, disk_gb: int) -> str:
    return f"{int(cpus)}cpu-{int(memory_mb)}mb-{int(disk_gb)}gb"


def _host_lock(state_dir: Path) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(str(state_dir), threading.Lock())


def _check_hosts(hosts) -> list[dict]:
    if not hosts:
        raise ValueError("SshPoolNodeDriver needs hosts=[{name, address, cpus, memory_mb, ...}, ...]")
    out, names = [], set()
    for raw in hosts:
        if not isinstance(raw, dict):
            raise TypeError(f"a host must be a dict, not {type(raw).__name__}")
        unknown = set(raw) - _HOST_KEYS
        if unknown:
            raise ValueError(f"host {raw.get('name')!r}: unknown keys {sorted(unknown)}")
        name = str(raw.get("name") or "")
        if not _NAME.match(name):
            raise ValueError(f"invalid host name {name!r}: use letters, digits, '.', '_', '-'")
        if name in names:
            raise ValueError(f"host {name!r} is listed twice")
        names.add(name)
        if not raw.get("address"):
            raise ValueError(f"host {name!r} has no address")
        root = str(raw.get("node_root") or DEFAULT_NODE_ROOT)
        parts = PurePosixPath(root).parts
        if not root.startswith("/") or len(parts) < 2 or ".." in parts or "." in root.split("/"):
            raise ValueError(f"host {name!r}: node_root must be an absolute path below / ({root!r})")
        host = {
            "name": name,
            "address": str(raw["address"]),
            "port": int(raw.get("port") or 22),
            "user": str(raw.get("user") or "root"),
            "cpus": int(raw.get("cpus") or 0),
            "memory_mb": int(raw.get("memory_mb") or 0),
            "disk_gb": int(raw.get("disk_gb") or 0),
            "node_root": str(PurePosixPath(root)),
            "python_interpreter": str(raw.get("python_interpreter") or "/usr/bin/python3"),
        }
        if host["cpus"] < 1 or host["memory_mb"] < 0 or host["disk_gb"] < 0:
            raise ValueError(f"host {name!r}: cpus must be >= 1, memory_mb and disk_gb >= 0")
        out.append(host)
    return out


class SshPoolNodeDriver(NodeDriver):
    """Nodes on a fixed list of SSH hosts, one node per host at a time.

    ``key`` (or ``state_dir=``): the directory of the pool's state on this machine; ``secret``:
    the SSH private key (PEM/OpenSSH text; None: ssh's own defaults of the user running the
    service); ``hosts``: dicts with name, address, port (22), user (root), cpus, memory_mb,
    disk_gb, node_root (/var/lib/prominence-node) and python_interpreter (/usr/bin/python3)."""

    type = SSH_PROVIDER
    name = "SSH host pool"
    website = "https://github.com/prominence-eosc"
    connectionCls = ConnectionKey  # never used: the hosts are reached with ansible-runner
    features = {"create_node": []}

    def __init__(self, key: str | os.PathLike | None = None, secret: str | None = None, *args,
                 hosts=None, state_dir=None, stop_timeout: int = STOP_TIMEOUT, **kwargs):
        base = state_dir if state_dir is not None else key
        if base is None:
            raise ValueError("SshPoolNodeDriver needs a state directory (key=... or state_dir=...)")
        # The key stays out of libcloud's attributes (driver.secret, its connection).
        super().__init__(str(base), None, *args, **kwargs)
        if secret is not None and not isinstance(secret, str):
            raise TypeError("secret must be the SSH private key's text, or None")
        self._ssh_key = _Secret(secret) if secret else None
        self.hosts = _check_hosts(hosts)
        self._by_name = {h["name"]: h for h in self.hosts}
        self.state_dir = Path(base).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.stop_timeout = int(stop_timeout)
        self._lock = _host_lock(self.state_dir)

    def __repr__(self) -> str:
        return f"<SshPoolNodeDriver {self.state_dir} hosts={[h['name'] for h in self.hosts]}>"

    # --- catalogue -----------------------------------------------------------------------

    def list_sizes(self, location: NodeLocation | None = None) -> list[NodeSize]:
        shapes = sorted({(h["cpus"], h["memory_mb"], h["disk_gb"]) for h in self.hosts})
        return [
            NodeSize(id=size_id(*shape), name=size_id(*shape), ram=shape[1], disk=shape[2], bandwidth=None,
                     price=0, driver=self, extra={"cpus": shape[0]})
            for shape in shapes
        ]

    def list_images(self, location: NodeLocation | None = None) -> list[NodeImage]:
        return [NodeImage(id="host", name="host", driver=self, extra={})]

    def list_locations(self) -> list[NodeLocation]:
        return [NodeLocation(id="pool", name="pool", country="", driver=self, extra={})]

    # --- lifecycle -----------------------------------------------------------------------

    def create_node(
        self,
        name: str,
        size: NodeSize,
        image: NodeImage | None = None,
        location: NodeLocation | None = None,
        ex_metadata: dict | None = None,
        ex_tags: dict | None = None,
    ) -> Node:
        """Take a free host of ``size``'s shape for node ``name`` and record it. Nothing runs on
        the host yet (configure it with playbooks/node.yml). Raises NoFreeHostError ("no free
        host") when every host of that shape has a node."""
        if not _NAME.match(name or ""):
            raise ValueError(f"invalid node name {name!r}: use letters, digits, '.', '_', '-'")
        wanted = self._shape_of(size)
        tags = {str(k): str(v) for k, v in {**(ex_metadata or {}), **(ex_tags or {})}.items()}
        with self._state() as state:
            nodes = state["nodes"]
            if name in nodes:
                raise ValueError(f"a node named {name!r} exists already")
            busy = {record["host"] for record in nodes.values()}
            free = [h for h in self.hosts
                    if (h["cpus"], h["memory_mb"], h["disk_gb"]) == wanted and h["name"] not in busy]
            if not free:
                total = sum(1 for h in self.hosts if (h["cpus"], h["memory_mb"], h["disk_gb"]) == wanted)
                if not total:
                    raise ValueError(f"ssh pool: no host has the size {size_id(*wanted)} "
                                     f"(sizes: {', '.join(s.id for s in self.list_sizes())})")
                raise NoFreeHostError(
                    f"ssh pool: {NO_FREE_HOST} of size {size_id(*wanted)} "
                    f"(quota exceeded: {total} of {total} such hosts in use)", driver=self)
            host = free[0]
            record = {
                "name": name,
                "host": host["name"],
                "tags": tags,
                "created": time.time(),
                # where it went, in case the host's entry changes before the node is destroyed
                "address": host["address"],
                "port": host["port"],
                "user": host["user"],
                "node_dir": f"{host['node_root']}/{name}",
            }
            nodes[name] = record
        log.info("ssh pool: node %s on host %s (%s)", name, host["name"], host["address"])
        return self._to_node(record)

    def list_nodes(self) -> list[Node]:
        with self._state(write=False) as state:
            records = list(state["nodes"].values())
        return [self._to_node(r) for r in sorted(records, key=lambda r: r["name"])]

    def destroy_node(self, node: Node) -> bool:
        """Stop the node's agent and remove its directory on its host (playbooks/stop.yml over
        SSH), then free the host. Raises LibcloudError if that failed (the record stays, so a
        retry does it again); True otherwise, also for a node that is not (or no longer) here."""
        from provisioner.configure import STOP_PLAYBOOK, run_playbook

        name = str(node.id)
        with self._state(write=False) as state:
            record = state["nodes"].get(name)
        if record is None:
            return True
        target = self._target(record)
        started = time.monotonic()
        result = run_playbook(
            STOP_PLAYBOOK,
            target["address"],
            {"node_dir": target["node_dir"], "node_name": name, "node_become": target["user"] != "root"},
            connection="ssh",
            ssh_user=target["user"],
            ssh_key=self._ssh_key.reveal() if self._ssh_key else None,
            ssh_port=target["port"],
            timeout=self.stop_timeout,
            python_interpreter=target["python_interpreter"],
        )
        if not result.ok:
            log.warning("ssh pool: stopping node %s on host %s failed (%s) after %.1f s: %s", name,
                        record["host"], result.status, time.monotonic() - started, result.error)
            raise LibcloudError(f"ssh pool: could not stop node {name} on host {record['host']}: "
                                f"{result.error or result.status}", driver=self)
        with self._state() as state:
            state["nodes"].pop(name, None)
        log.info("ssh pool: node %s stopped, host %s free (%.1f s)", name, record["host"],
                 time.monotonic() - started)
        return True

    def reboot_node(self, node: Node) -> bool:
        return False

    # --- helpers -------------------------------------------------------------------------

    def _shape_of(self, size: NodeSize) -> tuple[int, int, int]:
        for h in self.hosts:
            shape = (h["cpus"], h["memory_mb"], h["disk_gb"])
            if str(size.id) == size_id(*shape):
                return shape
        extra = getattr(size, "extra", None) or {}
        cpus = extra.get("cpus")
        return (int(cpus) if cpus is not None else 0, int(size.ram or 0), int(size.disk or 0))

    def _target(self, record: dict) -> dict:
        """Where a recorded node is: its host's entry now, else what was recorded at creation."""
        host = self._by_name.get(record["host"], {})
        return {
            "address": record.get("address") or host.get("address"),
            "port": int(record.get("port") or host.get("port") or 22),
            "user": record.get("user") or host.get("user") or "root",
            "node_dir": record.get("node_dir") or f"{host.get('node_root', DEFAULT_NODE_ROOT)}/{record['name']}",
            "python_interpreter": host.get("python_interpreter", "/usr/bin/python3"),
        }

    @contextmanager
    def _state(self, write: bool = True):
        """The pool's state ({"nodes": {name: record}}) under the lock; written back atomically
        when ``write`` and the block ends without an exception."""
        path = self.state_dir / STATE_FILE
        with self._lock, open(self.state_dir / LOCK_FILE, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                try:
                    state = json.loads(path.read_text())
                except FileNotFoundError:
                    state = {}
                state.setdefault("nodes", {})
                yield state
                if write:
                    tmp = path.with_name(f"{STATE_FILE}.{os.getpid()}.tmp")
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w") as f:
                        json.dump(state, f, indent=2, sort_keys=True)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, path)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _to_node(self, record: dict) -> Node:
        target = self._target(record)
        host = self._by_name.get(record["host"], {})
        created = record.get("created")
        return Node(
            id=record["name"],
            name=record["name"],
            state=NodeState.RUNNING,
            public_ips=[],
            private_ips=[target["address"]],
            driver=self,
            size=None,
            image=None,
            extra={
                "tags": dict(record.get("tags", {})),
                "host": record["host"],
                "port": target["port"],
                "user": target["user"],
                "node_dir": target["node_dir"],
                "cpus": host.get("cpus"),
                "memory_mb": host.get("memory_mb"),
                "disk_gb": host.get("disk_gb"),
                "created": created,
            },
            created_at=(
                datetime.fromtimestamp(created, timezone.utc) if isinstance(created, (int, float)) else None
            ),
        )


__all__ = ["NO_FREE_HOST", "SSH_PROVIDER", "NoFreeHostError", "SshPoolNodeDriver", "size_id"]
