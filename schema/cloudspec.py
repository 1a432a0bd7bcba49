"""A cloud as an admin configures it (DESIGN.md 3.4): validated here for `prominence-server cloud`,
`cloud apply FILE` and (next) GraphQL's admin mutations, stored in the `clouds` table.

Field names are the table's (snake_case). Credentials are not part of a CloudSpec: they are set
apart (`set-credentials`), encrypted (schema/credentials.py), and never read back.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictBool, StrictFloat, StrictInt, StringConstraints, model_validator

from schema.jobspec import MAX_CPUS, MAX_DISK_GB, IntRange, Text, _Model

MAX_MEMORY_MB = 100_000 * 1024
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")]
Provider = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,40}$")]
Seconds = Annotated[StrictInt | StrictFloat, Field(gt=0, le=7 * 86400)]
# Secrets never go into the plain driver arguments: they would be shown back by `cloud show`.
SECRET_ARGUMENTS = frozenset({"key", "secret", "token", "password", "ssh_private_key", "api_key", "secret_key"})
_JSON_SCALAR = (str, int, float, bool, type(None))


def _plain_json(value: Any, where: str = "") -> Any:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("keys must be strings")
            _plain_json(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _plain_json(item, where)
    elif not isinstance(value, _JSON_SCALAR):
        raise ValueError("must hold only strings, numbers, booleans, lists and mappings")
    elif isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _no_secrets(value: dict[str, Any]) -> dict[str, Any]:
    found = sorted(SECRET_ARGUMENTS & set(value))
    if found:
        raise ValueError(f"must not hold {', '.join(found)}: set secrets with `cloud set-credentials`")
    return value


def _absolute(path: str) -> str:
    if not path.startswith("/") or "/../" in f"{path}/":
        raise ValueError("must be an absolute path without ..")
    return path


class Flavour(_Model):
    name: Text
    cpus: IntRange(1, MAX_CPUS)
    memory_mb: IntRange(1, MAX_MEMORY_MB)
    disk_gb: IntRange(1, MAX_DISK_GB)
    price: Annotated[StrictInt | StrictFloat, Field(ge=0, le=1_000_000)] = 0.0  # per hour


class CloudSpec(_Model):
    name: Name
    provider: Provider
    driver_args: Annotated[dict[str, Any], AfterValidator(_plain_json), AfterValidator(_no_secrets)] = {}
    # Extra create_node arguments; {"id": "..."} stands for a provider object with that id (a subnet...).
    create_options: Annotated[dict[str, Any], AfterValidator(_plain_json), AfterValidator(_no_secrets)] = {}
    region: Annotated[str, StringConstraints(max_length=200)] = ""
    site: Annotated[str, StringConstraints(max_length=200)] = ""
    image: Annotated[str, StringConstraints(max_length=400)] = ""
    connection: Literal["ssh", "local"] = "ssh"
    ssh_user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "root"
    ssh_port: IntRange(1, 65535) = 22
    node_root: Annotated[Text, AfterValidator(_absolute)] = "/var/lib/prominence-node"
    install_packages: StrictBool = True  # the playbook installs podman and what jobs' sandboxes need
    flavours: Annotated[list[Flavour], Field(min_length=1, max_length=200)]
    max_instances: IntRange(0, 1_000_000) | None = None
    max_cpus: IntRange(0, 100_000_000) | None = None
    max_memory_mb: IntRange(0, 1 << 50) | None = None
    min_nodes: IntRange(0, 10_000) = 0
    idle_timeout: Seconds = 600.0
    create_timeout: Seconds = 600.0
    running_timeout: Seconds = 600.0
    configure_timeout: Seconds = 600.0
    max_booting: IntRange(1, 256) = 4
    enabled: StrictBool = True

    @model_validator(mode="after")
    def _consistent(self) -> CloudSpec:
        names = [f.name for f in self.flavours]
        if len(names) != len(set(names)):
            raise ValueError("flavours must have distinct names")
        return self


# What `cloud update` may change: everything but the name.
UPDATABLE = frozenset(CloudSpec.model_fields) - {"name"}
