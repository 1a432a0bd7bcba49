"""Workflows: submit, list, describe, delete, re-run, clone, remove, and the stdout/stderr of their
jobs. The rules that move a workflow on live in schema/workflowrun.py (the engine) and
schema/dag.py (its pure decisions); this layer checks who may do what and stores."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from pydantic import ValidationError
from sqlalchemy import Engine, func, select, update

from gateway.services.batcher import JobInserter
from gateway.services.data import check_job_objects, workflow_object_names
from gateway.services.jobs import JobService, ListingQuery
from gateway.services.notify import workflow_submission_columns
from schema import workflowrun
from schema.db import reading
from schema.errors import Forbidden, InvalidInput, InvalidState, NotFound
from schema.identity import Identity
from schema.jobspec import describe_errors
from schema.signals import Signal
from schema.tables import jobs, workflows
from schema.workflowspec import WorkflowSpec, parse_workflow

FINISHED = ("completed", "failed", "deleted", "killed")
STATUSES = ("idle", "running", "completed", "failed", "deleted")


class WorkflowNotFound(NotFound):
    """A workflow named by the caller does not exist (REST answers 400, as the real server)."""


@dataclass
class WorkflowRecord:
    row: Any
    live: dict[str, dict[str, int]]

    @property
    def progress(self) -> dict[str, int]:
        return workflowrun.progress_of(self.row.state, self.live, self.row.total)


class WorkflowService:
    def __init__(self, engine: Engine, inserter: JobInserter, jobs_service: JobService, changed: Signal):
        self._engine = engine
        self._inserter = inserter
        self._jobs = jobs_service
        self._changed = changed
        self._notifier = jobs_service._notifier  # checks webhook URLs at submission, as for jobs

    @staticmethod
    def parse(document: str | bytes | dict[str, Any]) -> WorkflowSpec:
        return parse_workflow(document)

    async def submit(self, identity: Identity, spec: WorkflowSpec) -> int:
        """Stores the workflow, its jobs outside factories and its first factory instances in one
        commit (with other submissions of the moment): acknowledged means stored whole."""
        if self._notifier is not None:
            self._notifier.check_workflow(spec)
        await self._check_objects(identity, spec)
        now = int(time.time())
        notify = workflow_submission_columns(identity, spec)
        workflow_id = await self._inserter.insert(
            lambda connection: workflowrun.create(connection, identity.username, spec, now, notify=notify,
                                                  groups=identity.groups))
        self._changed.notify()
        return workflow_id

    async def list(self, identity: Identity, query: ListingQuery) -> list[WorkflowRecord]:
        query.check()
        return await to_thread.run_sync(self._list, identity, query)

    def _list(self, identity: Identity, query: ListingQuery) -> list[WorkflowRecord]:
        statement = select(workflows).where(*query.conditions(workflows, identity.username)).order_by(workflows.c.id)
        with reading(self._engine) as connection:
            rows = connection.execute(statement).all()
            live = workflowrun.live_counts(connection, [r.id for r in rows if r.status in workflowrun.ACTIVE])
        return [WorkflowRecord(row, live.get(row.id, {})) for row in rows]

    async def page(self, identity: Identity, statuses: list[str] | None, name: str | None, first: int,
                   after: int | None) -> tuple[list[WorkflowRecord], int, bool]:
        """The caller's workflows in id order after `after` (keyset), at most `first`: the page,
        how many the filter selects in all, and whether more follow."""
        if name is not None and "\x00" in name:
            raise InvalidInput("name must not contain NUL characters")
        conditions = [workflows.c.owner == identity.username]
        if statuses:
            conditions.append(workflows.c.status.in_(statuses))
        if name is not None:
            conditions.append(workflows.c.name == name)

        def run() -> tuple[list[WorkflowRecord], int, bool]:
            with reading(self._engine) as connection:
                total = connection.execute(select(func.count()).select_from(workflows).where(*conditions)).scalar_one()
                window = conditions + ([workflows.c.id > after] if after is not None else [])
                rows = connection.execute(select(workflows).where(*window).order_by(workflows.c.id)
                                          .limit(first + 1)).all()
                more, rows = len(rows) > first, rows[:first]
                live = workflowrun.live_counts(connection, [r.id for r in rows if r.status in workflowrun.ACTIVE])
            return [WorkflowRecord(row, live.get(row.id, {})) for row in rows], total, more
        return await to_thread.run_sync(run)

    async def get(self, identity: Identity, workflow_id: int) -> WorkflowRecord | None:
        found = await self.list(identity, ListingQuery(ids=[workflow_id], detail=True))
        return found[0] if found else None

    def _owned(self, connection, identity: Identity, workflow_id: int, missing: str = "Workflow does not exist") -> Any:
        row = connection.execute(select(workflows).where(workflows.c.id == workflow_id)).first()
        if row is None:
            raise WorkflowNotFound(missing)
        if row.owner != identity.username:
            raise Forbidden("Not authorized to access this workflow")
        return row

    async def delete(self, identity: Identity, workflow_ids: list[int]) -> None:
        """Delete every listed workflow and stop its jobs, or (any unknown or finished) none."""
        def run() -> None:
            now = int(time.time())
            with self._engine.begin() as connection:
                found = connection.execute(select(workflows.c.id, workflows.c.status, workflows.c.spec).where(
                    workflows.c.id.in_(workflow_ids), workflows.c.owner == identity.username)
                    .with_for_update()).all()
                if len(found) != len(set(workflow_ids)):
                    raise WorkflowNotFound("No such workflow(s)")
                done = sorted(row.id for row in found if row.status in FINISHED)
                if done:
                    raise InvalidState(f"Workflow(s) already finished: {', '.join(map(str, done))}")
                for row in found:
                    leave = bool((row.spec.get("policies") or {}).get("leaveInQueue"))
                    connection.execute(update(workflows).where(workflows.c.id == row.id).values(
                        status="deleted", status_reason=workflowrun.WORKFLOW_DELETED, end_time=now, in_queue=leave))
                    workflowrun.stop_jobs(connection, row.id, now)
        await to_thread.run_sync(run)
        self._changed.notify()

    async def remove(self, identity: Identity, workflow_id: int) -> None:
        def run() -> None:
            with self._engine.begin() as connection:
                row = self._owned(connection, identity, workflow_id)
                if not row.in_queue:
                    raise InvalidState("Workflow is no longer in the queue")
                if row.status not in FINISHED:
                    raise InvalidState(f"Workflow {workflow_id} has not finished: delete it to stop it, then remove it")
                connection.execute(update(workflows).where(workflows.c.id == workflow_id).values(in_queue=False))
                connection.execute(update(jobs).where(jobs.c.workflow_id == workflow_id,
                                                      jobs.c.end_time.is_not(None)).values(in_queue=False))
        await to_thread.run_sync(run)

    def _stored_spec(self, row: Any, what: str) -> WorkflowSpec:
        try:
            return WorkflowSpec.model_validate(row.spec)
        except ValidationError as error:  # stored before a rule that it breaks existed
            raise InvalidState(f"The workflow cannot be {what}: {describe_errors(error, 'workflow description')}") \
                from None

    async def clone(self, identity: Identity, workflow_id: int) -> int:
        """A new workflow from the stored description, whatever the state of this one."""
        def load() -> Any:
            with self._engine.connect() as connection:
                return self._owned(connection, identity, workflow_id,
                                   "Unable to get JSON description of the specified workflow")
        spec = self._stored_spec(await to_thread.run_sync(load), "cloned")
        return await self.submit(identity, spec)

    async def rerun(self, identity: Identity, workflow_id: int) -> int:
        """A new workflow that runs again only what did not complete successfully (failed jobs,
        what depends on them, and what never ran); what completed counts as done."""
        def load() -> Any:
            with self._engine.connect() as connection:
                return self._owned(connection, identity, workflow_id)
        row = await to_thread.run_sync(load)
        if row.status not in ("completed", "failed"):
            raise InvalidState("Unable to find re-run workflow as the original workflow is not in a suitable state")
        spec = self._stored_spec(row, "re-run")
        await to_thread.run_sync(self._check_reruns, row, spec)  # refused early; checked again as it is stored
        if self._notifier is not None:
            self._notifier.check_workflow(spec)
        await self._check_objects(identity, spec)  # the re-runner's groups, as a clone's
        now = int(time.time())
        notify = workflow_submission_columns(identity, spec)  # the re-runner's address, as a clone's

        def store(connection) -> int:
            check_reruns(connection, row, spec, lock=True)
            done = workflowrun.completed_instances(connection, row)
            return workflowrun.create(connection, identity.username, spec, now, rerun_of=row.id, done_before=done,
                                      notify=notify, groups=identity.groups)
        new_id = await self._inserter.insert(store)
        self._changed.notify()
        return new_id

    async def _check_objects(self, identity: Identity, spec: WorkflowSpec) -> None:
        """The uploaded objects its jobs name exist, in areas they may read (gateway/services/data.py)."""
        names = list(workflow_object_names(spec))
        if names:
            await to_thread.run_sync(check_job_objects, self._engine, identity.username, identity.groups, names,
                                     "workflow description")

    def _check_reruns(self, row: Any, spec: WorkflowSpec) -> None:
        with reading(self._engine) as connection:
            check_reruns(connection, row, spec)

    async def job_of(self, identity: Identity, workflow_id: int, job: str, instance: int | None) -> int | None:
        """The id of the job `job` (instance `instance` of a factory job) of the workflow: its
        latest attempt, or the one of the workflow it re-runs when it did not run again. None
        when it has no job yet."""
        def run() -> int | None:
            with self._engine.connect() as connection:
                row = self._owned(connection, identity, workflow_id)
                spec = workflowrun.spec_of(connection, row.id, row.spec)
                if job not in {j.name for j in spec.jobs}:
                    raise InvalidInput(f"Workflow {workflow_id} has no job named {job}")
                factory = spec.factory_of(job)
                if factory is None and instance is not None:
                    raise InvalidInput(f"Job {job} is not a factory job: it has no instances")
                if factory is not None and instance is None:
                    raise InvalidInput(f"Job {job} is a factory job: name the instance (0 to {factory.count() - 1})")
                if factory is not None and not 0 <= instance < factory.count():
                    raise InvalidInput(f"Job {job} has instances 0 to {factory.count() - 1}, not {instance}")
                while row is not None:
                    found = connection.execute(select(jobs.c.id).where(
                        jobs.c.workflow_id == row.id, jobs.c.wf_job == job,
                        jobs.c.wf_instance.is_(None) if instance is None else jobs.c.wf_instance == instance)
                        .order_by(jobs.c.id.desc()).limit(1)).scalar()
                    if found is not None:
                        return found
                    row = connection.execute(select(workflows).where(
                        workflows.c.id == row.rerun_of)).first() if row.rerun_of else None
                return None
        return await to_thread.run_sync(run)

    async def read_output(self, identity: Identity, workflow_id: int, job: str, instance: int | None, stream: str,
                          node: int, offset: int) -> AsyncIterator[bytes]:
        job_id = await self.job_of(identity, workflow_id, job, instance)
        if job_id is None:
            raise NotFound(f"{stream} does not exist")
        return await self._jobs.read_output(identity, job_id, stream, node, offset)


def check_reruns(connection: Any, row: Any, spec: WorkflowSpec, lock: bool = False) -> None:
    """The workflow policy `maximumReruns` (none: no limit): the re-runs of one submission are
    counted along their chain of `rerun_of` links, all together (re-runs of the original and of
    its re-runs, also two of the same workflow); one more is refused (InvalidState, a 400) once
    there are that many. `lock` (in the storing transaction): PostgreSQL serialises re-runs of
    one submission on its original's row, so that two at once cannot both pass."""
    limit = spec.policies.maximumReruns if spec.policies else None
    if limit is None:
        return
    root, seen = row, {row.id}
    while root.rerun_of is not None and root.rerun_of not in seen:
        above = connection.execute(select(workflows.c.id, workflows.c.rerun_of).where(
            workflows.c.id == root.rerun_of)).first()
        if above is None:
            break
        root = above
        seen.add(root.id)
    if lock:
        connection.execute(select(workflows.c.id).where(workflows.c.id == root.id).with_for_update()).first()
    family = select(workflows.c.id).where(workflows.c.id == root.id).cte("family", recursive=True)
    family = family.union(select(workflows.c.id).where(workflows.c.rerun_of == family.c.id))
    made = connection.execute(select(func.count()).select_from(family)).scalar_one() - 1
    if made >= limit:
        raise InvalidState(f"Unable to re-run workflow {row.id}: its policy maximumReruns allows {limit} "
                           f"re-run{'' if limit == 1 else 's'} of workflow {root.id} (re-runs of re-runs included), "
                           f"and it has had {made}")


def status_value(raw: str) -> str:
    if raw not in STATUSES:
        raise InvalidInput(f"invalid status specified: {raw} (one of {', '.join(STATUSES)})")
    return raw
