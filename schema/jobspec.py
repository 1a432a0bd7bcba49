"""The job description accepted by `POST /v1/jobs`: pydantic models, camelCase as on the wire.

The rules follow the real PROMINENCE validator (reference/prominence-api.md section 3), liberal
where DESIGN.md 3.1 says so: `workDir` and `args` in tasks, the `ignoreTaskTailures` spelling,
float `memory`, `runtime` defaulting to `singularity`, `maximumTimeInQueue: -1`. Unknown keys and
values of the wrong type are rejected; `describe_errors` turns a rejection into one sentence that
names the field and the rule.
"""
from __future__ import annotations

import base64
import binascii
import math
import posixpath
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)

MAX_BODY_BYTES = 1 << 20  # the real server's MAX_CONTENT_LENGTH
DEFAULT_DISK_GB = 10  # the real server's DEFAULT_DISK_GB; the CLI always sends 10 as well
MPI_TYPES = frozenset({"openmpi", "mpich", "intelmpi"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


def _rename(data: Any, canonical: str, alias: str) -> Any:
    """Accept `alias` as another spelling of `canonical` (never both with different values)."""
    if isinstance(data, dict) and alias in data:
        data = dict(data)
        value = data.pop(alias)
        if canonical in data and data[canonical] != value:
            raise ValueError(f"{canonical} and {alias} are the same field; give only one of them")
        data[canonical] = value
    return data


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _relative_path(value: str) -> str:
    """A path inside the job directory: relative, and no `..` that would climb out of it."""
    if not value or "\x00" in value:
        raise ValueError("must be a non-empty path")
    if value.startswith("/") or value.startswith("\\"):
        raise ValueError("must be relative to the job directory, not an absolute path")
    if ".." in value.replace("\\", "/").split("/"):
        raise ValueError("must not contain '..' (it would escape the job directory)")
    if posixpath.normpath(value) in (".", ""):
        raise ValueError("must name a file inside the job directory")
    return value


def _base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64-encoded content") from None
    return value


def _scalar_to_str(value: Any) -> Any:
    # Environment values written as JSON numbers or booleans are what a user means as text.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


Number = Annotated[Union[StrictInt, StrictFloat], AfterValidator(_positive)]
RelativePath = Annotated[str, AfterValidator(_relative_path)]
Name = Annotated[str, StringConstraints(max_length=512, pattern=r"^[a-zA-Z0-9\-_\s/.]*$")]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=511, pattern=r"^[a-zA-Z0-9]+$")]
LabelValue = Annotated[str, StringConstraints(min_length=1, max_length=511, pattern=r"^[\w\-./]+$")]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvValue = Annotated[str, BeforeValidator(_scalar_to_str), StringConstraints(max_length=65536)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Pair = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]


def _ordered_pair(name: str, pair: list[int] | None) -> None:
    if pair is not None and pair[0] > pair[1]:
        raise ValueError(f"{name} must be [minimum, maximum] with minimum <= maximum")


class Resources(_Model):
    nodes: Annotated[int, Field(ge=1, le=1024)] | None = None
    cpus: Annotated[int, Field(ge=1, le=4096)] | None = None
    cpusRange: Pair | None = None
    cpusOptions: Pair | None = None
    totalCpusRange: Pair | None = None
    memory: Number | None = None
    memoryPerCpu: Number | None = None
    disk: Annotated[int, Field(ge=1, le=1_000_000)] = DEFAULT_DISK_GB
    walltime: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> Resources:
        if sum(v is not None for v in (self.cpus, self.cpusRange, self.cpusOptions)) != 1:
            raise ValueError("exactly one of cpus, cpusRange and cpusOptions is required")
        if sum(v is not None for v in (self.memory, self.memoryPerCpu)) != 1:
            raise ValueError("exactly one of memory and memoryPerCpu is required")
        _ordered_pair("cpusRange", self.cpusRange)
        _ordered_pair("totalCpusRange", self.totalCpusRange)
        if self.nodes is None and self.totalCpusRange is None:
            self.nodes = 1  # as the real server fills it at submission
        return self

    @property
    def min_cpus(self) -> int:
        return self.cpus or min(self.cpusRange or self.cpusOptions)


class ImagePullCredential(_Model):
    username: Text
    token: Text


class Task(_Model):
    image: Text
    runtime: Literal["singularity", "udocker", "docker", "podman"] = "singularity"
    cmd: Annotated[str, StringConstraints(max_length=65536)] | None = None
    args: list[Annotated[str, StringConstraints(max_length=65536)]] | None = None
    env: dict[EnvName, EnvValue] | None = None
    app: Text | None = None
    workdir: Text | None = None
    procsPerNode: Annotated[int, Field(ge=1)] | None = None
    type: Literal["basic", "sidecar", "openmpi", "mpich", "intelmpi"] | None = None
    imagePullCredential: ImagePullCredential | None = None
    imageSha256: Annotated[str, StringConstraints(pattern=r"^(sha256:)?[0-9a-fA-F]{64}$")] | None = None
    stdout: RelativePath | None = None

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data: Any) -> Any:
        return _rename(data, "workdir", "workDir")

    @model_validator(mode="after")
    def _rules(self) -> Task:
        if self.type in MPI_TYPES:
            if not self.cmd:
                raise ValueError(f"a task of type {self.type} needs a cmd")
            if self.cmd.startswith("mpirun "):
                raise ValueError("cmd must not start with 'mpirun ': the service starts MPI itself")
        if self.app is not None and self.runtime == "udocker":
            raise ValueError("app is only available with the singularity runtime")
        return self


class PlacementSet(_Model):
    sites: list[Text] | None = None
    regions: list[Text] | None = None


class Placement(_Model):
    requirements: PlacementSet | None = None
    preferences: PlacementSet | None = None


class JobPolicies(_Model):
    maximumRetries: Annotated[int, Field(ge=0, le=6)] | None = None
    maximumTaskRetries: Annotated[int, Field(ge=0, le=6)] | None = None
    preemptible: bool | None = None
    maximumTimeInQueue: Annotated[int, Field(ge=-1, le=44640)] | None = None
    maximumIdleTimePerResource: Annotated[int, Field(ge=1, le=44640)] | None = None
    leaveInQueue: bool | None = None
    placement: Placement | None = None
    priority: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    autoScalingType: Literal["none", "dedicated", "shared"] | None = None
    ignoreTaskFailures: bool | None = None
    reportJobSuccessOnTaskFailure: bool | None = None
    runSerialTasksOnAllNodes: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data: Any) -> Any:
        return _rename(data, "ignoreTaskFailures", "ignoreTaskTailures")


class Notification(_Model):
    event: Literal["jobFinished"]
    type: Literal["email"]


class InputFile(_Model):
    filename: RelativePath
    content: Annotated[str, AfterValidator(_base64)]
    executable: bool | None = None


class Artifact(_Model):
    url: Text
    mountpoint: Annotated[str, StringConstraints(pattern=r"^[^/:]+:/.*$")] | None = None
    executable: bool | None = None


class OneDataOptions(_Model):
    provider: Text
    token: Text
    options: str | None = None


class B2DropOptions(_Model):
    app_username: Text = Field(alias="app-username")
    app_password: Text = Field(alias="app-password")


class WebDavOptions(_Model):
    url: Text
    username: Text
    password: Text


class Storage(_Model):
    type: Literal["onedata", "b2drop", "webdav"]
    mountpoint: Annotated[str, StringConstraints(pattern=r"^/.*")]
    default: bool | None = None
    directory: Text | None = None
    onedata: OneDataOptions | None = None
    b2drop: B2DropOptions | None = None
    webdav: WebDavOptions | None = None

    @model_validator(mode="after")
    def _matching_block(self) -> Storage:
        if getattr(self, self.type) is None:
            raise ValueError(f"storage of type {self.type} needs a '{self.type}' block")
        for other in {"onedata", "b2drop", "webdav"} - {self.type}:
            if getattr(self, other) is not None:
                raise ValueError(f"storage of type {self.type} cannot have a '{other}' block")
        return self


# Credentials inside `storage` that are never shown back (the real server's redaction).
STORAGE_SECRETS = {"onedata": ("token",), "b2drop": ("app-password", "app-username"), "webdav": ("username", "password")}


class JobSpec(_Model):
    """A job as submitted to `POST /v1/jobs`."""

    name: Name = ""
    labels: dict[LabelKey, LabelValue] | None = None
    tasks: Annotated[list[Task], Field(min_length=1, max_length=100)]
    resources: Resources
    policies: JobPolicies | None = None
    notifications: list[Notification] | None = None
    inputs: list[InputFile] | None = None
    artifacts: list[Artifact] | None = None
    outputFiles: list[RelativePath] | None = None
    outputDirs: list[RelativePath] | None = None
    storage: Storage | None = None

    @model_validator(mode="after")
    def _rules(self) -> JobSpec:
        if all(task.type == "sidecar" for task in self.tasks):
            raise ValueError("at least one task must not be a sidecar")
        for number, task in enumerate(self.tasks):
            if task.procsPerNode is not None and task.procsPerNode > self.resources.min_cpus:
                raise ValueError(f"tasks[{number}].procsPerNode must not be more than the cpus requested")
        names = [posixpath.normpath(item.filename) for item in self.inputs or ()]
        if len(names) != len(set(names)):
            raise ValueError("inputs must have distinct filenames")
        return self

    def demand(self) -> dict[str, Any]:
        """What one node must offer this job, and how it is queued: the scheduler's columns."""
        resources, policies = self.resources, self.policies or JobPolicies()
        memory_gb = resources.memory or resources.memoryPerCpu * resources.min_cpus
        minutes = policies.maximumTimeInQueue or 0
        return {"cpus": resources.min_cpus, "memory_mb": math.ceil(memory_gb * 1024), "disk_gb": resources.disk,
                "nodes": resources.nodes or 0,  # 0: totalCpusRange, as many nodes as it can get
                "priority": policies.priority or 0, "autoscale": policies.autoScalingType != "none",
                "queue_limit_s": minutes * 60 if minutes > 0 else None}

    def to_stored(self) -> dict[str, Any]:
        """The normalized description that is stored, shown back and cloned."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def redact_storage(storage: dict[str, Any]) -> dict[str, Any]:
    block = dict(storage.get(storage["type"], {}))
    for key in STORAGE_SECRETS[storage["type"]]:
        if key in block:
            block[key] = "***"
    return {**storage, storage["type"]: block}


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not an allowed field",
    "model_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON list",
    "int_type": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
}


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe_errors(error: ValidationError, what: str = "job description") -> str:
    """One sentence for the first problem: the field's path and the rule it breaks."""
    first = error.errors(include_url=False)[0]
    kind, loc = first["type"], tuple(first["loc"])
    if kind == "json_invalid":
        return f"The {what} is not valid JSON"
    message = _MESSAGES.get(kind) or first["msg"].removeprefix("Value error, ")
    if loc[-1:] in (("int",), ("float",)):  # a member of the int-or-float union: name the field once
        loc, message = loc[:-1], "must be a number"
    if loc[-1:] == ("[key]",):
        loc, message = loc[:-1], f"is not an allowed key: {message[0].lower()}{message[1:]}"
    field = _path(loc)
    if kind == "extra_forbidden":
        return f'Invalid {what}: "{field}" is not an allowed field'
    message = message[0].lower() + message[1:]
    return f"Invalid {what}: {field}: {message}" if field else f"Invalid {what}: {message}"
