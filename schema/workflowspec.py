"""The workflow description accepted by `POST /v1/workflows` (reference section 4.1): pydantic
models as on the wire, the DAG's checks (unknown names, cycles), the factories' instances and
how one instance's job description is made from its template.

A factory's instances are never listed in full: instance `i` of a parameter sweep is found from
`i` (mixed radix over the parameters' value counts, the first parameter outermost), so a sweep of
100,000 points costs nothing until its instances are created (schema/workflowrun.py creates them
as they may run, a few at a time).
"""
from __future__ import annotations

import copy
import math
import re
import string
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, StrictFloat, StrictInt, StringConstraints, ValidationError, \
    model_validator

from schema.dag import Graph, cycle_of
from schema.jobspec import (
    MAX_NOTIFICATIONS, IntRange, JobSpec, LabelKey, LabelValue, Name, Notification, Placement, _Model,
    describe_errors,
)
from schema.errors import InvalidInput

MAX_SWEEP_DIMENSIONS = 4
SWEEP_DIMENSIONS_ERROR = f"Currently only parameter sweeps up to {MAX_SWEEP_DIMENSIONS}D are supported"
MAX_INSTANCES = 1_000_000  # instances of one factory job
MAX_WORKFLOW_JOBS = 1000  # jobs (templates) in one description
JobName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[a-zA-Z0-9\-_.]+$")]
ParameterName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Number = Annotated[Union[StrictInt, StrictFloat], Field(ge=-1e15, le=1e15)]
ZipValue = Union[StrictInt, StrictFloat, Annotated[str, StringConstraints(max_length=4096,
                                                                          pattern=r"^[A-Za-z0-9_.,:=+@%-]*$")]]


class SweepParameter(_Model):
    name: ParameterName
    start: Number
    end: Number
    step: Number | None = None
    number: IntRange(1, MAX_INSTANCES) | None = None  # how many values from start to end (instead of step)

    @model_validator(mode="after")
    def _rule(self) -> SweepParameter:
        if (self.step is None) == (self.number is None):
            raise ValueError("exactly one of step and number is required")
        if self.step is not None:
            if self.step == 0:
                raise ValueError("step must not be 0")
            if (self.end - self.start) * self.step < 0:
                raise ValueError("step must go from start towards end")
        if self.count() > MAX_INSTANCES:
            raise ValueError(f"gives more than {MAX_INSTANCES} values")
        return self

    def count(self) -> int:
        if self.number is not None:
            return self.number
        return int(math.floor((self.end - self.start) / self.step + 1e-9)) + 1

    def value(self, k: int) -> int | float:
        if self.number is not None:
            step = (self.end - self.start) / (self.number - 1) if self.number > 1 else 0
        else:
            step = self.step
        return _tidy(self.start + k * step)


class ZipParameter(_Model):
    name: ParameterName
    values: Annotated[list[ZipValue], Field(min_length=1, max_length=MAX_INSTANCES)]


class ParameterSweep(_Model):
    type: Literal["parameterSweep"]
    name: JobName
    jobs: Annotated[list[JobName], Field(min_length=1)]
    parameters: Annotated[list[SweepParameter], Field(min_length=1)]

    @model_validator(mode="after")
    def _rule(self) -> ParameterSweep:
        if len(self.parameters) > MAX_SWEEP_DIMENSIONS:
            raise ValueError(SWEEP_DIMENSIONS_ERROR)
        _distinct([p.name for p in self.parameters])
        if self.count() > MAX_INSTANCES:
            raise ValueError(f"gives more than {MAX_INSTANCES} instances")
        return self

    def count(self) -> int:
        return math.prod(p.count() for p in self.parameters)

    def parameters_of(self, index: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for parameter in reversed(self.parameters):  # the first parameter is the outermost
            index, k = divmod(index, parameter.count())
            values[parameter.name] = parameter.value(k)
        return {p.name: values[p.name] for p in self.parameters}


class Zip(_Model):
    type: Literal["zip"]
    name: JobName
    jobs: Annotated[list[JobName], Field(min_length=1)]
    parameters: Annotated[list[ZipParameter], Field(min_length=1)]

    @model_validator(mode="after")
    def _rule(self) -> Zip:
        _distinct([p.name for p in self.parameters])
        if len({len(p.values) for p in self.parameters}) != 1:
            raise ValueError("all parameters of a zip factory must have the same number of values")
        return self

    def count(self) -> int:
        return len(self.parameters[0].values)

    def parameters_of(self, index: int) -> dict[str, Any]:
        return {p.name: p.values[index] for p in self.parameters}


class Repeat(_Model):
    type: Literal["repeat"]
    name: JobName
    jobs: Annotated[list[JobName], Field(min_length=1)]
    number: IntRange(1, MAX_INSTANCES)

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data: Any) -> Any:
        if isinstance(data, dict) and "num" in data and "number" not in data:  # the CLI's Repeat.to_dict()
            data = {**data, "number": data["num"]}
            del data["num"]
        return data

    def count(self) -> int:
        return self.number

    def parameters_of(self, index: int) -> dict[str, Any]:
        return {}


Factory = Annotated[Union[ParameterSweep, Zip, Repeat], Field(discriminator="type")]


class WorkflowPolicies(_Model):
    maximumRetries: IntRange(0, 10) | None = None
    maximumReruns: IntRange(0, 10) | None = None
    leaveInQueue: bool | None = None
    placement: Placement | None = None


class WorkflowNotification(Notification):
    """`workflowFinished` (the reference's only one), by `email` or signed `webhook`, with the
    rules of a job's notifications (docs/api-decisions.md, Notifications)."""

    event: Literal["workflowFinished"]


def _distinct(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"parameter names must be unique: {name}")
        seen.add(name)


def _job_list(value: Any) -> Any:
    if isinstance(value, list):
        for number, job in enumerate(value):
            if isinstance(job, dict) and not job.get("name"):
                raise ValueError(f"all jobs must have names (jobs[{number}] has none)")
    return value


class WorkflowSpec(_Model):
    """A workflow as submitted to `POST /v1/workflows`."""

    name: Name = ""
    labels: dict[LabelKey, LabelValue] | None = None
    jobs: Annotated[list[JobSpec], Field(min_length=1, max_length=MAX_WORKFLOW_JOBS), BeforeValidator(_job_list)]
    dependencies: dict[JobName, list[JobName]] | None = None
    factories: list[Factory] | None = None
    policies: WorkflowPolicies | None = None
    notifications: Annotated[list[WorkflowNotification], Field(max_length=MAX_NOTIFICATIONS)] | None = None

    @model_validator(mode="after")
    def _rules(self) -> WorkflowSpec:
        names = [job.name for job in self.jobs]
        for number, name in enumerate(names):
            if not re.fullmatch(r"[a-zA-Z0-9\-_.]+", name):
                raise ValueError(f"jobs[{number}].name: names of jobs in workflows may only hold letters, digits, "
                                 f"'-', '_' and '.' ({name!r})")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"all jobs must have unique names: {', '.join(duplicates)}")
        known = set(names)
        for parent, children in (self.dependencies or {}).items():
            unknown = [name for name in [parent, *children] if name not in known]
            if unknown:
                raise ValueError(f"dependencies name jobs that are not defined: {', '.join(sorted(set(unknown)))}")
        factory_of: dict[str, str] = {}
        for number, factory in enumerate(self.factories or ()):
            for name in factory.jobs:
                if name not in known:
                    raise ValueError(f"factories[{number}].jobs names a job that is not defined: {name}")
                if name in factory_of:
                    raise ValueError(f"job {name} is in two factories: {factory_of[name]} and {factory.name}")
                factory_of[name] = factory.name
        cycle = cycle_of(self.graph())
        if cycle:
            raise ValueError(f"dependencies form a cycle: {' -> '.join(cycle)}")
        return self

    def factory_of(self, job: str) -> ParameterSweep | Zip | Repeat | None:
        return next((f for f in self.factories or () if job in f.jobs), None)

    def graph(self) -> Graph:
        """Each job's parents and how many instances it has."""
        parents: dict[str, list[str]] = {job.name: [] for job in self.jobs}
        for parent, children in (self.dependencies or {}).items():
            for child in children:
                if parent not in parents[child]:
                    parents[child].append(parent)
        return Graph({job.name: tuple(parents[job.name]) for job in self.jobs},
                     {job.name: (f.count() if (f := self.factory_of(job.name)) else 1) for job in self.jobs},
                     frozenset(job.name for job in self.jobs if self.factory_of(job.name)))

    def template(self, job: str) -> JobSpec:
        return next(j for j in self.jobs if j.name == job)

    def to_stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_workflow(document: str | bytes | dict[str, Any]) -> WorkflowSpec:
    """A workflow description (JSON text, or already parsed): InvalidInput naming the field."""
    try:
        spec = (WorkflowSpec.model_validate(document) if isinstance(document, dict)
                else WorkflowSpec.model_validate_json(document))
    except ValidationError as error:
        message = describe_errors(error, "workflow description")
        if SWEEP_DIMENSIONS_ERROR.lower() in message.lower():  # the real server's words, as they are
            message = SWEEP_DIMENSIONS_ERROR
        raise InvalidInput(message) from None
    # What only an instance shows: a parameter's value substituted where it breaks a rule.
    for factory in spec.factories or ():
        count = factory.count()
        for index in (range(count) if isinstance(factory, Zip) else {0, count - 1}):
            for job in factory.jobs:
                try:
                    instance_spec(spec, 0, job, index)
                except ValidationError as error:
                    raise InvalidInput(describe_errors(
                        error, f"workflow description: job {job} with the parameters of instance {index} of "
                               f"factory {factory.name}")) from None
    return spec


def _tidy(value: float | int) -> int | float:
    """Integral values without a decimal point (as PROMINENCE writes them); float noise rounded."""
    if isinstance(value, float):
        value = round(value, 10)
        if value.is_integer():
            return int(value)
    return value


def _text(value: Any) -> str:
    return str(_tidy(value)) if isinstance(value, (int, float)) else str(value)


def _substitute(text: str, values: dict[str, str]) -> str:
    return string.Template(text).safe_substitute(values) if "$" in text else text


def instance_name(workflow_name: str, job: str, index: int | None) -> str:
    return f"{workflow_name}/{job}" if index is None else f"{workflow_name}/{job}/{index}"


def instance_parameters(spec: WorkflowSpec, job: str, index: int | None) -> dict[str, Any] | None:
    factory = spec.factory_of(job)
    return factory.parameters_of(index) if factory is not None and index is not None else None


def instance_spec(spec: WorkflowSpec, workflow_id: int, job: str, index: int | None) -> JobSpec:
    """The job description of one instance of `job` (index None: a job outside any factory): its
    name `<workflow>/<job>[/<i>]`, the parameters substituted ($name, ${name}) in cmd, args, env,
    output names and artifact URLs and set as PROMINENCE_PARAMETER_<name>, PROMINENCE_WORKFLOW_ID
    in every task's environment, and the workflow's policies (placement, leaveInQueue) where the
    job sets none. Raises ValidationError when a substituted value breaks a rule."""
    stored = copy.deepcopy(spec.template(job).to_stored())
    parameters = instance_parameters(spec, job, index) or {}
    values = {name: _text(value) for name, value in parameters.items()}
    stored["name"] = instance_name(spec.name, job, index)
    for task in stored["tasks"]:
        if "cmd" in task:
            task["cmd"] = _substitute(task["cmd"], values)
        if isinstance(task.get("args"), str):
            task["args"] = _substitute(task["args"], values)
        elif isinstance(task.get("args"), list):
            task["args"] = [_substitute(word, values) for word in task["args"]]
        env = {key: _substitute(value, values) for key, value in (task.get("env") or {}).items()}
        env.update({f"PROMINENCE_PARAMETER_{name}": value for name, value in values.items()})
        env["PROMINENCE_WORKFLOW_ID"] = str(workflow_id)
        task["env"] = env
    for key in ("outputFiles", "outputDirs"):
        if key in stored:
            stored[key] = [_substitute(name, values) for name in stored[key]]
    for artifact in stored.get("artifacts", ()):
        artifact["url"] = _substitute(artifact["url"], values)
    policies = spec.policies or WorkflowPolicies()
    job_policies = stored.setdefault("policies", {})
    if policies.placement is not None and "placement" not in job_policies:
        job_policies["placement"] = policies.placement.model_dump(mode="json", exclude_none=True)
    if policies.leaveInQueue is not None and "leaveInQueue" not in job_policies:
        job_policies["leaveInQueue"] = policies.leaveInQueue
    if not job_policies:
        del stored["policies"]
    return JobSpec.model_validate(stored)

