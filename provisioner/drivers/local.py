"""The ``local`` cloud: a libcloud NodeDriver whose "VMs" are node directories on this machine.

Each node is ``<base dir>/<name>/`` with a ``node.json`` describing it (size, tags, creation
time). The directory *is* the node: ``list_nodes()`` reads the directories back, so a restarted
service finds the nodes it created (and their tags, for the reconcile loop). The playbook
(``playbooks/node.yml`` with ``ansible_connection=local``) installs and starts the agent in the
directory and writes ``agent.pid``; ``destroy_node()`` stops that agent (and its process group)
and removes the directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from libcloud.common.base import ConnectionKey
from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeLocation, NodeSize
from libcloud.compute.providers import DRIVERS, get_driver, set_driver
from libcloud.compute.types import NodeState

from provisioner.agent.runtime import Podman
from provisioner.agent.sandbox import release

LOCAL_PROVIDER = "local"
NODE_FILE = "node.json"
PID_FILE = "agent.pid"
STOP_GRACE_SECONDS = 5.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_register_lock = threading.Lock()


# The service's own libcloud providers: id -> (module, class). The modules load when first used.
_PROVIDERS = {
    LOCAL_PROVIDER: ("provisioner.drivers.local", "LocalNodeDriver"),
    "ssh": ("provisioner.drivers.ssh_pool", "SshPoolNodeDriver"),  # ssh_pool.SSH_PROVIDER
}


def register() -> type[NodeDriver]:
    """Register the service's libcloud providers, "local" (LocalNodeDriver) and "ssh"
    (SshPoolNodeDriver), idempotently; return the "local" class."""
    with _register_lock:
        for provider, (module, cls) in _PROVIDERS.items():
            if provider not in DRIVERS:
                set_driver(provider, module, cls)
    return get_driver(LOCAL_PROVIDER)


def machine_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


class LocalNodeDriver(NodeDriver):
    """Nodes that are directories on this machine. ``key`` (or ``base_dir=``) is the base dir."""

    type = LOCAL_PROVIDER
    name = "Local nodes"
    website = "https://github.com/prominence-eosc"
    connectionCls = ConnectionKey  # never used: nothing here talks to a remote API
    features = {"create_node": []}

    def __init__(self, key: str | os.PathLike | None = None, secret=None, *args, base_dir=None, **kwargs):
        base = base_dir if base_dir is not None else key
        if base is None:
            raise ValueError("LocalNodeDriver needs a base directory (key=... or base_dir=...)")
        super().__init__(str(base), secret, *args, **kwargs)
        self.base_dir = Path(base).resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)

    # --- catalogue -----------------------------------------------------------------------

    def list_sizes(self, location: NodeLocation | None = None) -> list[NodeSize]:
        cpus, memory, disk = machine_cpus(), machine_memory_mb(), self._disk_gb()
        return [
            NodeSize(
                id=f"local-{c}cpu",
                name=f"local-{c}cpu",
                ram=memory * c // cpus,
                disk=disk,
                bandwidth=None,
                price=0,
                driver=self,
                extra={"cpus": c},
            )
            for c in range(1, cpus + 1)
        ]

    def list_images(self, location: NodeLocation | None = None) -> list[NodeImage]:
        return [NodeImage(id="local", name="local", driver=self, extra={})]

    def list_locations(self) -> list[NodeLocation]:
        return [NodeLocation(id="local", name="local", country="", driver=self, extra={})]

    # --- lifecycle -----------------------------------------------------------------------

    def create_node(
        self,
        name: str,
        size: NodeSize,
        image: NodeImage | None = None,
        location: NodeLocation | None = None,
        ex_metadata: dict | None = None,
    ) -> Node:
        """Make ``<base>/<name>/node.json``. Any NodeSize works if it has ``ram`` (MB) and
        ``extra["cpus"]`` (else the cpus of a ``local-<n>cpu`` id, else 1) and fits this machine."""
        if not _NAME.match(name or ""):
            raise ValueError(f"invalid local node name {name!r}: use letters, digits, '.', '_', '-'")
        cpus = _size_cpus(size)
        memory = int(size.ram or 0)
        if cpus < 1 or cpus > machine_cpus():
            raise ValueError(f"size {size.id}: {cpus} cpus does not fit this machine ({machine_cpus()} cpus)")
        if memory < 0 or memory > machine_memory_mb():
            raise ValueError(f"size {size.id}: {memory} MB does not fit this machine ({machine_memory_mb()} MB)")
        disk = int(size.disk) if size.disk else self._disk_gb()
        node_dir = self.base_dir / name
        node_dir.mkdir(mode=0o700)  # FileExistsError if the name is taken: never reuse a node dir
        record = {
            "id": name,
            "name": name,
            "size": {"id": str(size.id), "cpus": cpus, "memory_mb": memory, "disk_gb": disk},
            "image": image.id if image is not None else "local",
            "location": location.id if location is not None else "local",
            "tags": {str(k): str(v) for k, v in (ex_metadata or {}).items()},
            "created": time.time(),
        }
        tmp = node_dir / (NODE_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, node_dir / NODE_FILE)
        return self._to_node(node_dir, record)

    def list_nodes(self) -> list[Node]:
        nodes = []
        for node_dir in sorted(self.base_dir.iterdir()):
            try:
                record = json.loads((node_dir / NODE_FILE).read_text())
            except (OSError, ValueError):
                continue  # not a node (or one being created / removed right now)
            nodes.append(self._to_node(node_dir, record))
        return nodes

    def destroy_node(self, node: Node) -> bool:
        node_dir = self._node_dir(node)
        if not node_dir.exists():
            return True
        stop_agent(node_dir)
        # The node's containers belong to the "VM" too; a killed agent leaves them running.
        # (Their names start with the node's name: see provisioner/agent/agent.py.)
        if shutil.which("podman"):
            conf = node_dir / "containers.conf"
            Podman(containers_conf=str(conf) if conf.exists() else None).stop_all(f"{node.name}-")
        # ... and so does it leave its jobs' sandboxes: their filesystems and network namespaces
        # are mounts, detached before anything below them is removed.
        release(str(node_dir))
        if node_dir.exists():  # something recreated files meanwhile: one more try, then report
            release(str(node_dir))
        return not node_dir.exists()

    def reboot_node(self, node: Node) -> bool:
        return False

    # --- helpers -------------------------------------------------------------------------

    def _node_dir(self, node: Node) -> Path:
        name = str(node.id)
        if not _NAME.match(name):
            raise ValueError(f"not a local node id: {name!r}")
        return self.base_dir / name

    def _disk_gb(self) -> int:
        return shutil.disk_usage(self.base_dir).total // 1024**3

    def _to_node(self, node_dir: Path, record: dict) -> Node:
        size = record.get("size", {})
        pid = _read_pid(node_dir)
        extra = {
            "dir": str(node_dir),
            "cpus": size.get("cpus"),
            "memory_mb": size.get("memory_mb"),
            "disk_gb": size.get("disk_gb"),
            "tags": dict(record.get("tags", {})),
            "created": record.get("created"),
            "agent_pid": pid if pid is not None and process_alive(pid) else None,
        }
        created = record.get("created")
        return Node(
            id=record["id"],
            name=record.get("name", record["id"]),
            state=NodeState.RUNNING,
            public_ips=[],
            private_ips=["127.0.0.1"],
            driver=self,
            size=None,
            image=None,
            extra=extra,
            created_at=(
                datetime.fromtimestamp(created, timezone.utc) if isinstance(created, (int, float)) else None
            ),
        )


def _size_cpus(size: NodeSize) -> int:
    extra = getattr(size, "extra", None) or {}
    if extra.get("cpus") is not None:
        return int(extra["cpus"])
    match = re.fullmatch(r"local-(\d+)cpu", str(size.id))
    return int(match.group(1)) if match else 1


def _read_pid(node_dir: Path) -> int | None:
    try:
        return int((node_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (agents are re-parented, nobody may reap them)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _is_agent_of(pid: int, node_dir: Path) -> bool:
    """Guard against a recycled pid: the agent's argv names ``<node_dir>/agent.json``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc/self").exists()  # no procfs: trust the pidfile
    return os.fsencode(str(node_dir / "agent.json")) in argv


def stop_agent(node_dir: Path, grace: float = STOP_GRACE_SECONDS) -> bool:
    """Stop the agent of ``node_dir`` (SIGTERM to its process group, SIGKILL after ``grace``).

    Returns True if no agent is left running."""
    pid = _read_pid(node_dir)
    if pid is None or pid <= 1 or not process_alive(pid) or not _is_agent_of(pid, node_dir):
        return True
    # The playbook starts the agent with setsid: it leads its own process group, which holds
    # its children (container runtimes, ...). Never signal our own group.
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return True
    use_group = group == pid and group != os.getpgrp()

    def send(sig: int) -> None:
        try:
            if use_group:
                os.killpg(group, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if process_alive(pid) or use_group:
        send(signal.SIGKILL)  # the agent, or children it left behind in its group
    deadline = time.monotonic() + 2
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not process_alive(pid)
