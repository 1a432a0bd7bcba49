"""One interface for every cloud (DESIGN.md 3.4), in the spirit of SkyPilot's `sky/provision`.

`Cloud` wraps a libcloud compute driver, looked up by the record's provider name (`local` and
`ssh` ship with the service, in provisioner/drivers; `ec2`, `openstack`, `gce`, `azure_arm`...
are libcloud's own), with what a cloud record adds: its flavours and prices, its image, the tag
that marks this service's instances, and how to reach an instance to configure it. The rest of
the provisioner only calls these methods; there is no per-cloud branch anywhere.

libcloud calls block, so every method here is called from worker threads, never from the tick.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from provisioner.planner import Flavour

SERVICE_TAG = "prominence-service"
NODE_TAG = "prominence-node"
# libcloud's providers name things differently: tags (EC2), metadata (OpenStack), labels (GCE).
_TAG_KEYS = ("tags", "metadata", "labels")
# Errors that no retry on this cloud will cure: the next cloud is tried at once (DESIGN.md 3.4).
_QUOTA = re.compile(r"LimitExceeded|quota|no free host", re.I)
# The flavour cannot be had there now: the next flavour is tried at once.
_FLAVOUR = re.compile(
    r"InsufficientInstanceCapacity|InvalidInstanceType|Unsupported|flavou?r.{0,30}not (found|available)", re.I)
_IMAGE = re.compile(r"InvalidAMIID|image.{0,40}not.?found|ImageNotFound|no such image", re.I)


class LaunchError(Exception):
    """A launch that failed; `kind` is quota or image (skip the cloud), flavour (try the next
    flavour) or error (retry)."""

    def __init__(self, phase: str, message: str, kind: str = "error"):
        super().__init__(f"{phase}: {message}")
        self.phase = phase
        self.kind = kind


def redact(error: BaseException | str, credentials: dict[str, str]) -> str:
    """An error's text for logs and node records, short, with no credential in it."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    for value in credentials.values():
        if isinstance(value, str) and len(value) >= 4:
            text = text.replace(value, "***")
    return text[:500]


def classify(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    if _QUOTA.search(text):
        return "quota"
    if _IMAGE.search(text):
        return "image"
    if _FLAVOUR.search(text):
        return "flavour"
    return "error"


@dataclass(frozen=True)
class Instance:
    """A provider's instance, normalised."""

    id: str
    name: str
    state: str  # libcloud's NodeState value: running, pending, terminated...
    address: str | None
    tags: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Access:
    """How to reach an instance to configure it."""

    host: str
    port: int
    user: str
    connection: str  # ssh | local
    node_dir: str
    private_key: str | None = field(default=None, repr=False)  # from the credentials; never logged


@dataclass(frozen=True)
class CloudRecord:
    """The columns of a `clouds` row the provisioner uses (credentials already decrypted)."""

    name: str
    provider: str
    driver_args: dict[str, Any]
    create_options: dict[str, Any]
    region: str
    site: str
    image: str
    connection: str
    ssh_user: str
    ssh_port: int
    node_root: str
    install_packages: bool
    flavours: tuple[Flavour, ...]
    create_timeout: float
    running_timeout: float
    configure_timeout: float
    credentials: dict[str, str] = field(default_factory=dict, repr=False)


class _Ref:
    """A provider object known by its id ({"id": "subnet-1"} in create_options)."""

    def __init__(self, id: str):  # noqa: A002 - libcloud reads .id
        self.id = id
        self.name = id


def _objects(value: Any) -> Any:
    if isinstance(value, dict):
        return _Ref(str(value["id"])) if set(value) == {"id"} else {k: _objects(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_objects(v) for v in value]
    return value


def _normalise(node: Any) -> Instance:
    tags = next((dict(node.extra[k]) for k in _TAG_KEYS if isinstance(node.extra.get(k), dict)
                 and SERVICE_TAG in node.extra[k]), {})
    addresses = [*(node.public_ips or ()), *(node.private_ips or ())]
    state = getattr(node.state, "value", node.state)
    return Instance(str(node.id), node.name, str(state), addresses[0] if addresses else None, tags, node.extra)


class Cloud:
    def __init__(self, record: CloudRecord, service_id: str):
        from libcloud.compute.base import NodeImage, NodeSize
        from libcloud.compute.providers import get_driver

        from provisioner.drivers import register

        register()
        self.record = record
        self.service_id = service_id
        # key and secret are the driver's first arguments, other credentials its keyword arguments;
        # a driver without a secret of its own (the ssh pool) gets the SSH key, to stop agents with.
        credentials = dict(record.credentials)
        ssh_key = credentials.pop("ssh_private_key", None)
        key, secret = credentials.pop("key", None), credentials.pop("secret", ssh_key)
        cls = get_driver(record.provider)
        self._driver = cls(key, secret, **{**record.driver_args, **credentials})
        self._image = NodeImage(id=record.image, name=record.image, driver=self._driver) if record.image else None
        self._size = lambda flavour: NodeSize(
            id=flavour.name, name=flavour.name, ram=flavour.memory_mb, disk=flavour.disk_gb, bandwidth=None,
            price=flavour.price, driver=self._driver, extra={"cpus": flavour.cpus})

    @property
    def name(self) -> str:
        return self.record.name

    def redact(self, error: BaseException | str) -> str:
        return redact(error, self.record.credentials)

    def launch(self, name: str, flavour: Flavour, node_id: int) -> Instance:
        """Create a VM tagged with this service's id and its node's id."""
        image = self._image or self._driver.list_images()[0]
        node = self._driver.create_node(name=name, size=self._size(flavour), image=image,
                                        ex_metadata={SERVICE_TAG: self.service_id, NODE_TAG: str(node_id)},
                                        **_objects(self.record.create_options))
        return _normalise(node)

    def instances(self) -> list[Instance]:
        """This service's instances on the cloud (terminated ones left out)."""
        return [i for i in map(_normalise, self._driver.list_nodes())
                if i.tags.get(SERVICE_TAG) == self.service_id and i.state not in ("terminated", "stopped")]

    def wait_running(self, instance_id: str, timeout: float, poll: float = 1.0) -> Instance:
        deadline = time.monotonic() + timeout
        while True:
            found = next((i for i in self.instances() if i.id == instance_id), None)
            if found is not None and found.state == "running" and found.address:
                return found
            if time.monotonic() >= deadline:
                state = found.state if found else "gone"
                raise LaunchError("running", f"not running with an address after {timeout:.0f} s (state {state})")
            time.sleep(poll)

    def destroy(self, instance: Instance) -> None:
        """Destroy one instance; an instance that is already gone counts as destroyed."""
        from libcloud.compute.base import Node

        node = Node(id=instance.id, name=instance.name, state=instance.state, public_ips=[], private_ips=[],
                    driver=self._driver, extra=instance.extra)
        if not self._driver.destroy_node(node):
            raise RuntimeError(f"the cloud did not destroy instance {instance.id}")

    def access(self, instance: Instance) -> Access:
        record, extra = self.record, instance.extra
        host = instance.address or ""
        if record.connection == "local":
            host = "127.0.0.1"
        return Access(host=host, port=int(extra.get("port") or record.ssh_port),
                      user=str(extra.get("user") or record.ssh_user), connection=record.connection,
                      node_dir=str(extra.get("node_dir") or f"{record.node_root.rstrip('/')}/{instance.name}"),
                      private_key=record.credentials.get("ssh_private_key"))
