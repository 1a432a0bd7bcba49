"""Jobs in GraphQL: the `Job` type, `job(id)`, the `jobs` connection and the job mutations.

A job's description (tasks, resources, policies...) is shown typed, as it was stored (JobSpec's
normalized form) with its secrets hidden as /v1 hides them; its execution record is what the
node's agent reported."""
from __future__ import annotations

import base64
import datetime
import functools
import json
import re
import shlex
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

import strawberry
from anyio import to_thread
from pydantic import BaseModel
from strawberry.dataloader import DataLoader
from strawberry.scalars import JSON

from gateway.graphql.context import caller, loader, services
from gateway.rest.common import MAX_ID, ascii_int
from gateway.services.clouds import NodeView
from gateway.services.jobs import MAX_PAGE, JobFilter, JobQuery, job_outputs, parse_spec
from schema import jobspec
from schema.enums import JobStatus as JobStatusValue
from schema.errors import Forbidden, InvalidInput, JobNotFound
from schema.identity import Identity
from schema.jobspec import HIDDEN, MAX_BODY_BYTES, redact_storage, redact_tasks

if TYPE_CHECKING:
    from gateway.graphql.nodes import Node

LazyNode = Annotated["Node", strawberry.lazy("gateway.graphql.nodes")]  # nodes.py imports this module
JobStatus = strawberry.enum(JobStatusValue, name="JobStatus", description="Where a job is in its life")


def _choices(name: str, model: type[BaseModel], field: str, description: str) -> type[Enum]:
    """A GraphQL enum of the choices (a Literal) of a JobSpec model's field, so the two cannot
    disagree: the stored value is the enum's value, its name in capitals (jobFinished: JOB_FINISHED)."""
    annotation = model.model_fields[field].annotation
    if get_origin(annotation) is not Literal:  # Optional[Literal[...]]
        [annotation] = [arg for arg in get_args(annotation) if arg is not type(None)]
    values = get_args(annotation)
    members = {re.sub(r"(?<=[a-z])(?=[A-Z])", "_", value).upper(): value for value in values}
    return strawberry.enum(Enum(name, members), name=name, description=description)


TaskRuntime = _choices("TaskRuntime", jobspec.Task, "runtime", "The container runtime a task asks for")
TaskType = _choices("TaskType", jobspec.Task, "type", "A task's kind (MPI flavours, sidecar)")
AutoScalingType = _choices("AutoScalingType", jobspec.JobPolicies, "autoScalingType",
                           "Whether new capacity is created for the job (NONE: only existing nodes)")
NotificationEvent = _choices("NotificationEvent", jobspec.Notification, "event", "What a notification is sent for")
NotificationType = _choices("NotificationType", jobspec.Notification, "type", "How a notification is sent")
StorageType = _choices("StorageType", jobspec.Storage, "type", "A kind of mounted storage")


@strawberry.enum(description="Whether an output is one of the job's outputFiles or outputDirs")
class OutputKind(Enum):
    FILE = "file"
    DIRECTORY = "directory"


@strawberry.type(description="Why a waiting job cannot start on a cloud now")
class CloudReason:
    cloud: str
    reason: str


def time_of(epoch: float | None) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) if epoch is not None else None


@functools.cache
def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


class _Stored:
    """A part of a job's description (stored in camelCase) or of its execution record, as the
    object of a GraphQL type (the type declares the fields). The stored part is the object's
    attribute dictionary, shared, not copied: a one-word field is read straight from its key, a
    longer one from its camelCase key, an absent one is None. Copying each part of 500 jobs into
    its type's fields took longer than the rest of a page. Read only."""

    def __init__(self, stored: dict[str, Any]):
        self.__dict__ = stored

    def __getattr__(self, name: str) -> Any:  # only for names that are not keys
        if name[0] == "_":
            raise AttributeError(name)
        return self.__dict__.get(_camel(name))


def _stored_type(name: str, **derived: Callable[[dict[str, Any]], Any]) -> type[_Stored]:
    """A _Stored whose `derived` fields are computed from the stored part when asked for (as
    properties, they win over keys of the same name)."""
    return type(name, (_Stored,), {field: property(lambda self, compute=compute: compute(self.__dict__))
                                   for field, compute in derived.items()})


# -- the description ---------------------------------------------------------------------------


@strawberry.type(description="A key and its value: a label, an environment variable")
class KeyValuePair:
    key: str
    value: str


def _pairs(mapping: dict[str, str] | None) -> list[KeyValuePair]:
    return [KeyValuePair(key=key, value=value) for key, value in sorted((mapping or {}).items())]


@strawberry.type(description="The registry login for a task's image")
class ImagePullCredential:
    username: str
    token: str = strawberry.field(description=f"Never shown: always {HIDDEN!r}")


def _words(args: str | list[str] | None) -> list[str] | None:
    if not isinstance(args, str):
        return args
    try:
        return shlex.split(args)
    except ValueError:  # stored before the rule that it splits existed
        return [args]


@strawberry.type(description="One container of the job, in the order they run")
class Task:
    image: str
    runtime: TaskRuntime
    type: TaskType | None
    cmd: str | None
    args: list[str] | None = strawberry.field(
        description="Words added after cmd's (given as one string, they are shown split as the node splits them)")
    env: list[KeyValuePair]
    app: str | None
    workdir: str | None
    procs_per_node: int | None
    image_pull_credential: ImagePullCredential | None
    image_sha256: str | None
    stdout: str | None = strawberry.field(description="Where in the job directory its stdout also goes")

    @staticmethod
    def of(task: dict[str, Any]) -> Any:
        """A Task from a task as redact_tasks shows it."""
        return _StoredTask(task)


# Enum fields are stored as their values, which serialise as the enum's names as they are.
_StoredTask = _stored_type(
    "StoredTask", args=lambda task: _words(task.get("args")), env=lambda task: _pairs(task.get("env")),
    image_pull_credential=lambda task: ImagePullCredential(**task["imagePullCredential"])
    if task.get("imagePullCredential") else None)


@strawberry.type(description="What each node of the job must offer, as submitted")
class Resources:
    nodes: int | None = strawberry.field(description="Null with totalCpusRange: as many nodes as it gets")
    cpus: int | None
    cpus_range: list[int] | None = strawberry.field(description="[minimum, maximum]")
    cpus_options: list[int] | None
    total_cpus_range: list[int] | None
    memory: float | None = strawberry.field(description="GB per node")
    memory_per_cpu: float | None = strawberry.field(description="GB")
    disk: int = strawberry.field(description="GB")
    walltime: int | None = strawberry.field(description="Minutes (null: the default, 12 hours)")


@strawberry.type(description="Sites or regions, for placement")
class PlacementSet:
    sites: list[str] | None
    regions: list[str] | None


@strawberry.type(description="Where the job may run (requirements) and would rather run (preferences)")
class Placement:
    requirements: PlacementSet | None
    preferences: PlacementSet | None


@strawberry.type(description="How the job is retried, queued and placed, as submitted (null: the default)")
class Policies:
    maximum_retries: int | None
    maximum_task_retries: int | None
    preemptible: bool | None
    maximum_time_in_queue: int | None = strawberry.field(description="Minutes; -1: no limit")
    maximum_idle_time_per_resource: int | None
    leave_in_queue: bool | None
    placement: Placement | None
    priority: int | None
    auto_scaling_type: AutoScalingType | None
    ignore_task_failures: bool | None
    report_job_success_on_task_failure: bool | None
    run_serial_tasks_on_all_nodes: bool | None

    @staticmethod
    def of(policies: dict[str, Any]) -> Any:
        """Policies from the stored ones."""
        return _StoredPolicies(policies)


def _placement(policies: dict[str, Any]) -> Placement | None:
    placement = policies.get("placement")
    if not placement:
        return None
    return Placement(**{part: _Stored(placement[part]) if part in placement else None
                        for part in ("requirements", "preferences")})


_StoredPolicies = _stored_type("StoredPolicies", placement=_placement)


@strawberry.type(description="A notification the job asks for")
class Notification:
    event: NotificationEvent
    type: NotificationType
    url: str | None = strawberry.field(description="Where a webhook notification is POSTed")


@strawberry.type(description="A file the job's directory starts with")
class InputFile:
    filename: str
    content: str = strawberry.field(description="Base64")
    executable: bool | None


@strawberry.type(description="A file fetched into the job's directory before it runs")
class Artifact:
    url: str
    mountpoint: str | None = strawberry.field(description="name:/path, for an archive mounted at /path")
    executable: bool | None


@strawberry.type(description="Storage mounted into the job's containers")
class Storage:
    type: StorageType
    mountpoint: str
    default: bool | None
    directory: str | None
    options: JSON = strawberry.field(description=f"The {{type}} block (its credentials shown as {HIDDEN!r})")


# -- what happened -----------------------------------------------------------------------------


_StoredStorage = _stored_type("StoredStorage", options=lambda storage: storage[storage["type"]])


@strawberry.type
class JobEvents:
    create_time: datetime.datetime
    start_time: datetime.datetime | None = strawberry.field(description="When its first attempt started")
    end_time: datetime.datetime | None


def _reported(record: dict[str, Any], key: str, kind: type) -> Any:
    """A value of the execution record, or None when missing or not a `kind`: the record is the
    agent's JSON, and one odd value must not make the whole job unreadable."""
    value = record.get(key)
    if isinstance(value, bool) and kind is not bool:
        return None
    if kind is float and isinstance(value, int):
        return float(value)
    return value if isinstance(value, kind) else None


@strawberry.type(description="How one task ran, as the node's agent reported it")
class TaskExecution:
    exit_code: int | None
    wall_time_usage: float | None = strawberry.field(description="Seconds")
    cpu_time_usage: float | None = strawberry.field(description="Seconds")
    max_resident_set_size_kb: int | None = strawberry.field(name="maxResidentSetSizeKB")
    retries: int | None = strawberry.field(description="Runs after the first (maximumTaskRetries)")
    runtime: str | None = strawberry.field(description="The runtime that really ran it")
    image_pull_status: str | None
    image_pull_time: float | None = strawberry.field(description="Seconds")
    image_sha256: str | None
    started_at: datetime.datetime | None = strawberry.field(description="When its (last) container started")
    error: str | None = strawberry.field(description="Why a sidecar could not run")

    @staticmethod
    def of(record: dict[str, Any]) -> Any:
        """A TaskExecution from a task's part of the execution record."""
        return _StoredTaskExecution(record)


def _reported_fields(**fields: tuple[str, type]) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """Fields read from the execution record with _reported: name=(camelCase key, kind)."""
    return {name: functools.partial(_reported, key=key, kind=kind) for name, (key, kind) in fields.items()}


_StoredTaskExecution = _stored_type("StoredTaskExecution", **{
    **_reported_fields(exit_code=("exitCode", int), wall_time_usage=("wallTimeUsage", float),
                       cpu_time_usage=("cpuTimeUsage", float), max_resident_set_size_kb=("maxResidentSetSizeKB", int),
                       retries=("retries", int), runtime=("runtime", str), image_pull_status=("imagePullStatus", str),
                       image_pull_time=("imagePullTime", float), image_sha256=("imageSha256", str),
                       error=("error", str)),
    "started_at": lambda record: time_of(_reported(record, "containerStartedAt", float)),
})


@strawberry.type(description="A container runtime of the node that ran the job, and its version")
class RuntimeVersion:
    runtime: str
    version: str


@strawberry.type(description="The node the job's last attempt ran on, as its cloud sized it")
class ProvisionedResources:
    cpus: int | None
    memory: int | None = strawberry.field(description="GB")
    disk: int | None = strawberry.field(description="GB")
    nodes: int | None


@strawberry.type(description="How the job ran: its execution record, written by the node's agent")
class JobExecution:
    site: str | None
    retries: int = strawberry.field(description="Attempts after the first (infrastructure failures, lost nodes)")
    tasks: list[TaskExecution]
    max_memory_usage_kb: int | None = strawberry.field(name="maxMemoryUsageKB")
    claimed_at: datetime.datetime | None = strawberry.field(description="When the node took the last attempt")
    stage_in_time: float | None = strawberry.field(description="Seconds")
    stage_in_error: str | None
    image_pull_error: str | None
    stage_out_time: float | None = strawberry.field(description="Seconds")
    runtime_versions: list[RuntimeVersion]
    provisioned_resources: ProvisionedResources | None
    cpu: JSON | None = strawberry.field(description="The node's CPU, as its /proc/cpuinfo describes it")

    @staticmethod
    def of(record: dict[str, Any]) -> Any:
        """A JobExecution from the execution record."""
        return _StoredExecution(record)


def _provisioned(record: dict[str, Any]) -> ProvisionedResources | None:
    provisioned = _reported(record, "provisionedResources", dict)
    if not provisioned:
        return None
    return ProvisionedResources(**{key: _reported(provisioned, key, int)
                                   for key in ("cpus", "memory", "disk", "nodes")})


def _runtime_versions(record: dict[str, Any]) -> list[RuntimeVersion]:
    versions = _reported(record, "runtimeVersion", dict) or {}
    return [RuntimeVersion(runtime=name, version=str(version)) for name, version in sorted(versions.items())]


_StoredExecution = _stored_type("StoredExecution", **{
    **_reported_fields(site=("site", str), max_memory_usage_kb=("maxMemoryUsageKB", int),
                       stage_in_time=("stageInTime", float), stage_in_error=("stageInError", str),
                       image_pull_error=("imagePullError", str), stage_out_time=("stageOutTime", float),
                       cpu=("cpu", dict)),
    "retries": lambda record: _reported(record, "retries", int) or 0,
    "tasks": lambda record: [TaskExecution.of(task) for task in _reported(record, "tasks", list) or ()
                             if isinstance(task, dict)],
    "claimed_at": lambda record: time_of(_reported(record, "claimedAt", float)),
    "runtime_versions": _runtime_versions,
    "provisioned_resources": _provisioned,
})


@strawberry.type(description="One of the job's outputFiles or outputDirs (a directory comes as a .tgz)")
class JobOutput:
    name: str
    kind: OutputKind
    size: float | None = strawberry.field(
        description="Bytes, once stored (a Float: GraphQL's Int is 32-bit); null until the job has stored it")
    url: str | None = strawberry.field(description="Where to download it (signed: no token needed), once stored")


# -- the job -----------------------------------------------------------------------------------


def _node_views(info: strawberry.Info) -> DataLoader:
    """The request's loader of nodes by id (NodeView, None for an unknown id): however many jobs
    ask for their node, one batched SQL statement."""
    clouds = services(info).clouds

    async def load(ids: Sequence[int]) -> list[NodeView | None]:
        found = await to_thread.run_sync(clouds.nodes_by_id, list(ids))
        return [found.get(node_id) for node_id in ids]
    return loader(info, "nodes_by_id", load)


@strawberry.type
class Job:
    """Every field is computed from the job's row when a query asks for it: a page of 500 jobs
    does not build what it does not show."""

    row: strawberry.Private[Any]  # with the detail columns: of JobService.get(), .page() or .list(detail=True)

    @classmethod
    def of(cls, row: Any) -> Job:
        return cls(row=row)

    @property
    def spec(self) -> dict[str, Any]:
        return self.row.spec  # as stored: JobSpec.to_stored()

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field
    def name(self) -> str:
        return self.row.name

    @strawberry.field
    def status(self) -> JobStatus:
        return self.row.status  # the enum's value, which serialises as its name

    @strawberry.field(description="Why it waits, failed or was killed")
    def status_reason(self) -> str | None:
        return self.row.status_reason or None

    @strawberry.field(description="While it waits: why, per candidate cloud")
    def wait_reasons(self) -> list[CloudReason]:
        return [CloudReason(cloud=c, reason=r) for c, r in sorted((self.row.wait_reasons or {}).items())]

    @strawberry.field
    def created_at(self) -> datetime.datetime:
        return time_of(self.row.create_time)

    @strawberry.field
    def started_at(self) -> datetime.datetime | None:
        return time_of(self.row.start_time)

    @strawberry.field
    def ended_at(self) -> datetime.datetime | None:
        return time_of(self.row.end_time)

    @strawberry.field(description="Its containers, in the order they run (credentials hidden)")
    def tasks(self) -> list[Task]:
        return [Task.of(task) for task in redact_tasks(self.spec["tasks"])]

    @strawberry.field
    def resources(self) -> Resources:
        return _Stored(self.spec["resources"])

    @strawberry.field
    def policies(self) -> Policies:
        return Policies.of(self.spec.get("policies", {}))

    @strawberry.field
    def labels(self) -> list[KeyValuePair]:
        return _pairs(self.spec.get("labels"))

    @strawberry.field
    def notifications(self) -> list[Notification]:
        return [_Stored(notification) for notification in self.spec.get("notifications", ())]

    @strawberry.field
    def inputs(self) -> list[InputFile]:
        return [_Stored(item) for item in self.spec.get("inputs", ())]

    @strawberry.field
    def artifacts(self) -> list[Artifact]:
        return [_Stored(item) for item in self.spec.get("artifacts", ())]

    @strawberry.field(description="Credentials hidden")
    def storage(self) -> Storage | None:
        if "storage" not in self.spec:
            return None
        storage = redact_storage(self.spec["storage"])
        return _StoredStorage(storage)

    @strawberry.field
    def events(self) -> JobEvents:
        return JobEvents(create_time=time_of(self.row.create_time), start_time=time_of(self.row.start_time),
                         end_time=time_of(self.row.end_time))

    @strawberry.field
    def execution(self) -> JobExecution:
        return JobExecution.of(self.row.execution)

    @strawberry.field(description="Its outputFiles, then its outputDirs")
    def outputs(self, info: strawberry.Info) -> list[JobOutput]:
        return [JobOutput(name=output.name, kind=OutputKind.DIRECTORY if output.is_dir else OutputKind.FILE,
                          size=output.size, url=output.url)
                for output in job_outputs(self.spec, self.row.execution, services(info).store)]

    @strawberry.field(description="The node it runs on (or ran on last, or was given), if any")
    async def node(self, info: strawberry.Info) -> LazyNode | None:
        from gateway.graphql.nodes import Node  # not at the top: nodes.py imports this module

        if self.row.node_id is None:
            return None
        view = await _node_views(info).load(self.row.node_id)
        return Node.of(view) if view is not None else None


@strawberry.type
class JobEdge:
    cursor: str
    node: Job


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type(description="A page of jobs (a Relay connection)")
class JobConnection:
    edges: list[JobEdge]
    page_info: PageInfo
    total_count: int = strawberry.field(description="All the jobs the filter selects")


@strawberry.input
class KeyValue:
    key: str
    value: str


@strawberry.input(description="Which jobs; every field given must hold")
class JobsFilter:
    status: list[JobStatus] | None = None
    name: str | None = None
    labels: list[KeyValue] | None = None
    created_after: datetime.datetime | None = None
    created_before: datetime.datetime | None = None

    def selected(self) -> JobFilter:
        return JobFilter(
            statuses=[JobStatusValue(s) for s in self.status] if self.status else None, name=self.name,
            labels=[(label.key, label.value) for label in self.labels or ()],
            created_after=int(self.created_after.timestamp()) if self.created_after else None,
            created_before=int(self.created_before.timestamp()) if self.created_before else None)


def _cursor(job_id: int) -> str:
    return base64.urlsafe_b64encode(f"job:{job_id}".encode()).decode()


def _from_cursor(cursor: str | None, name: str) -> int | None:
    if cursor is None:
        return None
    try:
        kind, _, number = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        kind, number = "", ""
    if kind != "job" or ascii_int(number) is None:
        raise InvalidInput(f"{name}: not a cursor of this connection")
    return int(number)


def job_id(value: str, name: str = "id") -> int:
    number = ascii_int(value)
    if number is None or not 0 < number <= MAX_ID:
        raise InvalidInput(f"{name}: {value!r} is not a job id")
    return number


@strawberry.type
class JobQueries:
    @strawberry.field(description="One of the caller's jobs")
    async def job(self, info: strawberry.Info, id: strawberry.ID) -> Job:  # noqa: A002 - its public name
        who = await caller(info)
        return Job.of(await services(info).jobs.get(who, job_id(id)))

    @strawberry.field(description=f"The caller's jobs in id order, at most {MAX_PAGE} a page")
    async def jobs(self, info: strawberry.Info, filter: JobsFilter | None = None,  # noqa: A002 - its public name
                   first: int | None = None, after: str | None = None, last: int | None = None,
                   before: str | None = None) -> JobConnection:
        who = await caller(info)
        page = await services(info).jobs.page(who, (filter or JobsFilter()).selected(), first,
                                              _from_cursor(after, "after"), last, _from_cursor(before, "before"))
        edges = [JobEdge(cursor=_cursor(row.id), node=Job.of(row)) for row in page.rows]
        return JobConnection(edges=edges, total_count=page.total, page_info=PageInfo(
            has_next_page=page.has_next, has_previous_page=page.has_previous,
            start_cursor=edges[0].cursor if edges else None, end_cursor=edges[-1].cursor if edges else None))


@strawberry.type(description="How many jobs the caller has in each status")
class JobCounts:
    idle: int
    running: int
    completed: int
    failed: int
    deleted: int
    killed: int
    total: int

    @classmethod
    async def of(cls, info: strawberry.Info, who: Identity) -> JobCounts:
        counts = await services(info).jobs.counts(who)
        return cls(**{status.value: count for status, count in counts.items()}, total=sum(counts.values()))


@contextmanager
def _only_own_jobs(number: int) -> Iterator[None]:
    """Another user's job is as unknown here as it is to `job(id)` (/v1's clone and remove answer
    it with a 403, as the real service does)."""
    try:
        yield
    except (Forbidden, JobNotFound):
        raise JobNotFound(f"No such job: {number}") from None


async def _delete(info: strawberry.Info, ids: list[strawberry.ID]) -> list[Job]:
    """Deletes the caller's jobs with these ids; returns them, deleted, in this order."""
    who = await caller(info)
    if not 0 < len(ids) <= MAX_PAGE:
        raise InvalidInput(f"ids: give from 1 to {MAX_PAGE} job ids")
    numbers = list(dict.fromkeys(job_id(value, f"ids[{n}]") for n, value in enumerate(ids)))
    jobs = services(info).jobs
    await jobs.delete(who, numbers)
    rows = {row.id: row for row in await jobs.list(who, JobQuery(ids=numbers, detail=True), list)}
    return [Job.of(rows[number]) for number in numbers]


@strawberry.type
class JobMutations:
    @strawberry.mutation(description="Submit a job: `input` is the JSON that POST /v1/jobs takes")
    async def create_job(self, info: strawberry.Info, input: JSON) -> Job:  # noqa: A002 - its public name
        who = await caller(info)
        document = json.dumps(input, ensure_ascii=False)
        if len(document.encode()) > MAX_BODY_BYTES:  # what /v1 refuses as a body
            raise InvalidInput(f"input: the job description is larger than the limit of {MAX_BODY_BYTES} bytes")
        jobs = services(info).jobs
        return Job.of(await jobs.get(who, await jobs.submit(who, parse_spec(document))))

    @strawberry.mutation(description="Submit a copy of one of the caller's jobs; returns the new job")
    async def clone_job(self, info: strawberry.Info, id: strawberry.ID) -> Job:  # noqa: A002
        who = await caller(info)
        number, jobs = job_id(id), services(info).jobs
        with _only_own_jobs(number):
            clone = await jobs.clone(who, number)
        return Job.of(await jobs.get(who, clone))

    @strawberry.mutation(description=f"Delete (stop) unfinished jobs of the caller, at most {MAX_PAGE}: all of "
                                     "them, or none when any is unknown or finished. Returns them, deleted")
    async def delete_jobs(self, info: strawberry.Info, ids: list[strawberry.ID]) -> list[Job]:
        return await _delete(info, ids)

    @strawberry.mutation(description="Delete (stop) an unfinished job of the caller; returns it, deleted")
    async def delete_job(self, info: strawberry.Info, id: strawberry.ID) -> Job:  # noqa: A002
        [job] = await _delete(info, [id])
        return job

    @strawberry.mutation(description="Take a finished job (kept by leaveInQueue) out of the default /v1 listing")
    async def remove_job(self, info: strawberry.Info, id: strawberry.ID) -> Job:  # noqa: A002
        who = await caller(info)
        number, jobs = job_id(id), services(info).jobs
        with _only_own_jobs(number):
            await jobs.remove(who, number)
        return Job.of(await jobs.get(who, number))
