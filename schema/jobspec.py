"""The job description accepted by `POST /v1/jobs`: pydantic models, camelCase as on the wire.

The rules follow the real PROMINENCE validator (reference/prominence-api.md section 3), liberal
where DESIGN.md 3.1 says so: `workDir` and `args` in tasks, the `ignoreTaskTailures` spelling,
float `memory`, `runtime` defaulting to `singularity`, `maximumTimeInQueue: -1`. Unknown keys and
values of the wrong type are rejected; `describe_errors` turns a rejection into one sentence that
names the field and the rule.

What would only fail when the job runs is rejected here: every number is finite and bounded (what
is stored fits its column and the container runtime's limits), no string holds a NUL (it cannot
be passed in an argv, and PostgreSQL's JSONB cannot store it), `cmd` and `args` split with shlex,
images are container image references and `workdir` is absolute.
"""
from __future__ import annotations

import base64
import binascii
import math
import posixpath
import re
import shlex
import urllib.parse
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

MAX_BODY_BYTES = 1 << 20  # the real server's MAX_CONTENT_LENGTH
DEFAULT_DISK_GB = 10  # the real server's DEFAULT_DISK_GB; the CLI always sends 10 as well
DEFAULT_WALLTIME_MINUTES = 720  # the promlet's default (12 h), as the node agent applies it
MPI_TYPES = frozenset({"openmpi", "mpich", "intelmpi"})

# Bounds of the numbers in a description: what is stored (memory_mb, cpus, ... are INTEGER columns)
# and what the node's container runtime accepts.
MAX_CPUS = 4096  # per node
MAX_NODES = 1024
MAX_TOTAL_CPUS = MAX_CPUS * MAX_NODES
MIN_MEMORY_GB = 0.01  # podman refuses memory limits under 6 MB; 0.01 GB is 11 MB once rounded up
MAX_MEMORY_GB = 100_000  # per node (100 TB); in MB it still fits a 32-bit INTEGER column
MAX_DISK_GB = 1_000_000
MAX_WALLTIME_MINUTES = 366 * 24 * 60  # a year: podman's --timeout and the agent's timers take it
MAX_ARGV_TEXT = 65536  # characters of cmd, of args and of each of its words


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, allow_inf_nan=False)


def _rename(data: Any, canonical: str, alias: str) -> Any:
    """Accept `alias` as another spelling of `canonical` (never both with different values)."""
    if isinstance(data, dict) and alias in data:
        data = dict(data)
        value = data.pop(alias)
        if canonical in data and data[canonical] != value:
            raise ValueError(f"{canonical} and {alias} are the same field; give only one of them")
        data[canonical] = value
    return data


def _memory_gb(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    if value < MIN_MEMORY_GB:
        raise ValueError(f"must be at least {MIN_MEMORY_GB} GB (the container runtime refuses smaller limits)")
    if value > MAX_MEMORY_GB:
        raise ValueError(f"must be at most {MAX_MEMORY_GB} GB")
    return value


def _no_nul(value: str) -> str:
    # A NUL cannot be passed to a process (argv, environment) nor stored in PostgreSQL's JSONB.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _splittable(value: str) -> str:
    """The node splits `cmd` (and a string `args`) into words with shlex.split, as the real service."""
    if not any(quoting in value for quoting in "'\"\\"):
        return value  # shlex.split fails only on an unclosed quote or a trailing backslash
    try:
        shlex.split(value)
    except ValueError as error:
        raise ValueError(f"cannot be split into words ({error})") from None
    return value


def _argument(value: str) -> str:
    if len(value) > MAX_ARGV_TEXT:
        raise ValueError(f"must be at most {MAX_ARGV_TEXT} characters")
    return _no_nul(value)


def _args(value: Any) -> str | list[str]:
    """`args`: one string (split like cmd, the seed's form) or the list of words itself."""
    if isinstance(value, str):
        return _splittable(_argument(value))
    if not isinstance(value, list) or not all(isinstance(word, str) for word in value):
        raise ValueError("must be a string or a list of strings")
    for number, word in enumerate(value):
        try:
            _argument(word)
        except ValueError as error:
            raise ValueError(f"item {number} {error}") from None
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path inside the container")
    return value


# A container image reference, as podman and docker read it (the distribution project's grammar):
# [host[:port]/]path[:tag][@algorithm:hex], path components in lowercase.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_IMAGE_NAME = rf"(?:{_HOST}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
IMAGE_REFERENCE = (rf"^(?P<name>{_IMAGE_NAME})(?::[\w][\w.-]{{0,127}})?"
                   r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")
_IMAGE_REFERENCE = re.compile(IMAGE_REFERENCE)
MAX_IMAGE_NAME = 255  # the reference grammar's limit on the name (without tag and digest)


# Uploaded data objects (gateway/services/data.py): what users may name, wherever they name one.
MAX_OBJECT_NAME = 1024  # bytes of a whole object name (UTF-8)
MAX_OBJECT_COMPONENT = 255  # bytes of one `/`-separated part of it
# An image ending so is the name of an uploaded archive (`podman save`), loaded with `podman load`.
ARCHIVE_IMAGE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Where nodes keep uploaded archive images (by content): never a name a job may ask for itself.
LOADED_IMAGE_REPOSITORY = "localhost/prominence-upload"


def check_object_name(value: str) -> str:
    """An uploaded object's name (`data.tgz`, or `<group>/dir/data.tgz` in a group's area): no
    empty, `.` or `..` part, no NUL or other control character, bounded lengths. ValueError says why."""
    if not value:
        raise ValueError("must be a non-empty object name")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain NUL or other control characters")
    if len(value.encode()) > MAX_OBJECT_NAME:
        raise ValueError(f"must be at most {MAX_OBJECT_NAME} bytes long")
    for part in value.split("/"):
        if part in ("", ".", ".."):
            raise ValueError("must not start or end with '/', contain '//', or have a '.' or '..' part")
        if len(part.encode()) > MAX_OBJECT_COMPONENT:
            raise ValueError(f"must not have a part longer than {MAX_OBJECT_COMPONENT} bytes")
    return value


def is_archive_image(image: str) -> bool:
    """Whether a task's image names an uploaded archive (not a registry image): any name ending
    .tar, .tar.gz or .tgz, as the real server's (`<group>/img.tar`: in a group's area)."""
    return image.lower().endswith(ARCHIVE_IMAGE_SUFFIXES)


def is_object_artifact(url: str) -> bool:
    """Whether an artifact's url names one of the user's uploaded objects (not an http(s) URL)."""
    return urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https")


def _image_reference(value: str) -> str:
    if is_archive_image(value):
        try:
            return check_object_name(value)
        except ValueError as error:
            raise ValueError(f"names an uploaded image archive, and {error}") from None
    if value.startswith((LOADED_IMAGE_REPOSITORY + ":", LOADED_IMAGE_REPOSITORY + "@")):
        raise ValueError(f"must not name {LOADED_IMAGE_REPOSITORY} (the nodes' store of uploaded archives)")
    match = _IMAGE_REFERENCE.match(value)
    if match is None:
        raise ValueError("must be a container image reference like busybox, docker.io/library/busybox:1.36 or "
                         "registry:5000/group/image@sha256:<digest> (lowercase path, no file paths)")
    if len(match["name"]) > MAX_IMAGE_NAME:
        raise ValueError(f"must have a name of at most {MAX_IMAGE_NAME} characters")
    return value


def _relative_path(value: str) -> str:
    """A path inside the job directory: relative, and no `..` that would climb out of it."""
    if not value:
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
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a string or a finite number")
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _integral(value: Any) -> Any:
    # 2.0 is the integer 2 (in JSON and JSON Schema alike); 2.5, "2" and true are not integers.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def IntRange(low: int, high: int) -> Any:  # noqa: N802 (a type, like conint)
    """An integer from `low` to `high`; integral floats (2.0) count."""
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_integral)]


MemoryGB = Annotated[Union[StrictInt, StrictFloat], AfterValidator(_memory_gb),
                     WithJsonSchema({"type": "number", "minimum": MIN_MEMORY_GB, "maximum": MAX_MEMORY_GB})]
# Every string that can reach a process or the database is NUL-free (checked after the length and
# pattern constraints, which pydantic only reports well when they come first).
NUL_FREE = AfterValidator(_no_nul)
RelativePath = Annotated[str, StringConstraints(min_length=1, max_length=4096), NUL_FREE,
                         AfterValidator(_relative_path)]
Name = Annotated[str, StringConstraints(max_length=512, pattern=r"^[a-zA-Z0-9\-_\s/.]*$")]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=511, pattern=r"^[a-zA-Z0-9]+$")]
LabelValue = Annotated[str, StringConstraints(min_length=1, max_length=511, pattern=r"^[\w\-./]+$")]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvValue = Annotated[str, StringConstraints(max_length=65536), NUL_FREE, BeforeValidator(_scalar_to_str)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=4096), NUL_FREE]
CommandLine = Annotated[str, StringConstraints(max_length=MAX_ARGV_TEXT), NUL_FREE, AfterValidator(_splittable)]
_ARGUMENT_SCHEMA = {"type": "string", "maxLength": MAX_ARGV_TEXT}
Args = Annotated[Union[str, list[str]], PlainValidator(_args),
                 WithJsonSchema({"anyOf": [_ARGUMENT_SCHEMA, {"type": "array", "items": _ARGUMENT_SCHEMA}]})]
# The document says at most 255 characters in all, a little stricter than the name's limit.
ImageReference = Annotated[Text, AfterValidator(_image_reference),
                           WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_IMAGE_NAME,
                                           "pattern": IMAGE_REFERENCE.replace("?P<name>", "")})]
AbsolutePath = Annotated[Text, AfterValidator(_absolute), WithJsonSchema(
    {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^/"})]
Pair = Annotated[list[IntRange(1, MAX_CPUS)], Field(min_length=2, max_length=2)]
TotalPair = Annotated[list[IntRange(1, MAX_TOTAL_CPUS)], Field(min_length=2, max_length=2)]


def _ordered_pair(name: str, pair: list[int] | None) -> None:
    if pair is not None and pair[0] > pair[1]:
        raise ValueError(f"{name} must be [minimum, maximum] with minimum <= maximum")


def _exactly_one(*names: str) -> dict[str, Any]:
    return {"oneOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in names]}


class Resources(_Model):
    # What the JSON schema (/v1/openapi.json) says of the rules _one_of_each checks.
    model_config = ConfigDict(json_schema_extra={"allOf": [_exactly_one("cpus", "cpusRange", "cpusOptions"),
                                                           _exactly_one("memory", "memoryPerCpu")]})
    nodes: IntRange(1, MAX_NODES) | None = None
    cpus: IntRange(1, MAX_CPUS) | None = None
    cpusRange: Pair | None = None
    cpusOptions: Pair | None = None
    totalCpusRange: TotalPair | None = None
    memory: MemoryGB | None = None
    memoryPerCpu: MemoryGB | None = None
    disk: IntRange(1, MAX_DISK_GB) = DEFAULT_DISK_GB
    walltime: IntRange(1, MAX_WALLTIME_MINUTES) | None = None  # minutes

    @model_validator(mode="after")
    def _one_of_each(self) -> Resources:
        if sum(v is not None for v in (self.cpus, self.cpusRange, self.cpusOptions)) != 1:
            raise ValueError("exactly one of cpus, cpusRange and cpusOptions is required")
        if sum(v is not None for v in (self.memory, self.memoryPerCpu)) != 1:
            raise ValueError("exactly one of memory and memoryPerCpu is required")
        _ordered_pair("cpusRange", self.cpusRange)
        _ordered_pair("totalCpusRange", self.totalCpusRange)
        if self.memoryPerCpu is not None and self.memoryPerCpu * self.min_cpus > MAX_MEMORY_GB:
            raise ValueError(f"memoryPerCpu times the cpus must be at most {MAX_MEMORY_GB} GB per node")
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
    # What the JSON schema says of the MPI rule _rules checks.
    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["type"], "properties": {"type": {"enum": sorted(MPI_TYPES)}}},
        "then": {"required": ["cmd"], "properties": {"cmd": {"type": "string", "minLength": 1,
                                                             "not": {"pattern": "^mpirun "}}}}})
    image: ImageReference
    runtime: Literal["singularity", "udocker", "docker", "podman"] = "singularity"
    cmd: CommandLine | None = None
    # The seed's `args` is one string, split like cmd and appended to its words; a list is taken
    # as the words themselves. Stored as given.
    args: Args | None = None
    env: dict[EnvName, EnvValue] | None = None
    app: Text | None = None
    workdir: AbsolutePath | None = None
    procsPerNode: IntRange(1, MAX_CPUS) | None = None
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
    maximumRetries: IntRange(0, 6) | None = None
    maximumTaskRetries: IntRange(0, 6) | None = None
    preemptible: bool | None = None
    maximumTimeInQueue: IntRange(-1, 44640) | None = None
    maximumIdleTimePerResource: IntRange(1, 44640) | None = None
    leaveInQueue: bool | None = None
    placement: Placement | None = None
    priority: IntRange(0, 1_000_000) | None = None
    autoScalingType: Literal["none", "dedicated", "shared"] | None = None
    ignoreTaskFailures: bool | None = None
    reportJobSuccessOnTaskFailure: bool | None = None
    runSerialTasksOnAllNodes: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data: Any) -> Any:
        return _rename(data, "ignoreTaskFailures", "ignoreTaskTailures")


MAX_WEBHOOK_URL = 2048  # characters of a webhook's URL
MAX_NOTIFICATIONS = 10  # per job


def _webhook_url(value: str) -> str:
    """An absolute http(s) URL with a host (docs/api-decisions.md, Notifications). Whether its
    address may be reached (no loopback, link-local, private...) is the sender's check, made when
    the notification is sent (names resolve then) and, for addresses written as such, at submission."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("must be an http or https URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http or https URL with a host, e.g. https://example.org/hook")
    if port == 0:
        raise ValueError("must not name port 0")
    return value


WebhookUrl = Annotated[str, StringConstraints(min_length=1, max_length=MAX_WEBHOOK_URL), AfterValidator(_webhook_url)]


class Notification(_Model):
    """`email` goes to the address in the submitter's token; `webhook` POSTs a signed JSON body to
    `url` (docs/api-decisions.md, Notifications)."""

    event: Literal["jobFinished"]
    type: Literal["email", "webhook"]
    url: WebhookUrl | None = Field(default=None, validate_default=True)

    @field_validator("url")
    @classmethod
    def _url_for_webhooks(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if kind == "webhook" and value is None:
            raise ValueError("is required for a webhook notification")
        if kind == "email" and value is not None:
            raise ValueError("is only for webhook notifications (an e-mail goes to the address in your token)")
        return value


class InputFile(_Model):
    filename: RelativePath
    content: Annotated[str, AfterValidator(_base64), WithJsonSchema(
        {"type": "string", "pattern": r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"})]
    executable: bool | None = None


def _artifact_url(value: str) -> str:
    """An http(s) URL, or the name of an uploaded object: one of the user's (a name without `/`) or
    `<group>/<path>` in a group's area (whether the submitter is in that group: the service)."""
    if not is_object_artifact(value):
        return value
    if "://" in value:
        raise ValueError("must be an http(s) URL or the name of an uploaded object (data.tgz, <group>/data.tgz)")
    try:
        return check_object_name(value)
    except ValueError as error:
        raise ValueError(f"names an uploaded object, and {error}") from None


class Artifact(_Model):
    url: Annotated[Text, AfterValidator(_artifact_url)]
    mountpoint: Annotated[str, StringConstraints(max_length=4096, pattern=r"^[^/:]+:/.*$"), NUL_FREE] | None = None
    executable: bool | None = None


class OneDataOptions(_Model):
    provider: Text
    token: Text
    options: Annotated[str, StringConstraints(max_length=4096), NUL_FREE] | None = None


class B2DropOptions(_Model):
    app_username: Text = Field(alias="app-username")
    app_password: Text = Field(alias="app-password")


class WebDavOptions(_Model):
    url: Text
    username: Text
    password: Text


class Storage(_Model):
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"properties": {"type": {"const": kind}, kind: {"type": "object"},
                        **{other: {"type": "null"} for other in ("onedata", "b2drop", "webdav") if other != kind}},
         "required": [kind]} for kind in ("onedata", "b2drop", "webdav")]})
    type: Literal["onedata", "b2drop", "webdav"]
    mountpoint: Annotated[str, StringConstraints(max_length=4096, pattern=r"^/.*"), NUL_FREE]
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
    notifications: Annotated[list[Notification], Field(max_length=MAX_NOTIFICATIONS)] | None = None
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
                "queue_limit_s": minutes * 60 if minutes > 0 else None,
                "placement": policies.placement.model_dump(exclude_none=True) if policies.placement else None}

    def to_stored(self) -> dict[str, Any]:
        """The normalized description that is stored, shown back and cloned."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


HIDDEN = "***"  # what a view shows instead of a credential


def redact_storage(storage: dict[str, Any]) -> dict[str, Any]:
    block = dict(storage.get(storage["type"], {}))
    for key in STORAGE_SECRETS[storage["type"]]:
        if key in block:
            block[key] = HIDDEN
    return {**storage, storage["type"]: block}


def redact_tasks(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks as views show them: an imagePullCredential's token hidden (the agent gets it)."""
    return [{**task, "imagePullCredential": {**task["imagePullCredential"], "token": HIDDEN}}
            if "imagePullCredential" in task else task for task in tasks]


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not an allowed field",
    "model_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON list",
    "int_type": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "finite_number": "must be a finite number",
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
    errors = error.errors(include_url=False)
    first = errors[0]
    kind, loc = first["type"], tuple(first["loc"])
    if kind == "json_invalid":
        return f"The {what} is not valid JSON"
    message = _MESSAGES.get(kind) or first["msg"].removeprefix("Value error, ")
    if loc[-1:] in (("int",), ("float",)):  # a member of the int-or-float union: name the field once
        loc = loc[:-1]
        infinite = any(e["type"] == "finite_number" and tuple(e["loc"][:-1]) == loc for e in errors)
        message = "must be a finite number" if infinite else "must be a number"
    if loc[-1:] == ("[key]",):
        loc, message = loc[:-1], f"is not an allowed key: {message[0].lower()}{message[1:]}"
    field = _path(loc)
    if kind == "extra_forbidden":
        return f'Invalid {what}: "{field}" is not an allowed field'
    message = message[0].lower() + message[1:]
    return f"Invalid {what}: {field}: {message}" if field else f"Invalid {what}: {message}"
