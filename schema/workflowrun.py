"""Workflows in the database: storing one with its jobs (one transaction), and the engine that
moves it on: it counts its finished jobs, asks the pure `schema.dag.step()` what follows, and
applies it (release jobs whose dependencies completed, stop those that can never run, create the
next factory instances, retry failed jobs, set the workflow's status). The provisioner runs
`advance()` at the start of every tick (so it runs in whichever process schedules), the gateway
runs the first step inside the submission's transaction.

Rows: every job outside a factory has its row from submission (blocked until its dependencies
completed); a factory job's instances get rows only as they may run, at most WORKFLOW_MAX_IDLE of
the workflow's jobs idle at once, so a sweep of 100,000 points is one workflow row until then.
"""
from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update

from schema.dag import JobProgress, step
from schema.enums import JobStatus, StatusReason
from schema.tables import id_counter, jobs, workflows
from schema.workflowspec import WorkflowSpec, instance_parameters, instance_spec

WORKFLOW_MAX_IDLE = 100  # idle jobs of one workflow at once (PROMINENCE's WORKFLOW_MAX_IDLE is 20)
ACTIVE = ("idle", "running")
BLOCKED = "Waiting for the jobs it depends on: {jobs}"
NOT_RUN = "Not run: a job it depends on did not complete successfully"
WORKFLOW_DELETED = "Workflow deleted by user"
JOB_OF_DELETED_WORKFLOW = "Job part of a workflow which was deleted by user"
_FIELDS = ("created", "ok", "failed", "skipped")

# Per database (engine): workflow id -> its validated description (immutable once stored).
_specs: weakref.WeakKeyDictionary[Engine, dict[int, WorkflowSpec]] = weakref.WeakKeyDictionary()
_specs_lock = threading.Lock()


def spec_of(connection: Connection, workflow_id: int, stored: dict[str, Any]) -> WorkflowSpec:
    with _specs_lock:
        cache = _specs.setdefault(connection.engine, {})
        found = cache.get(workflow_id)
    if found is None:
        found = WorkflowSpec.model_validate(stored)
        with _specs_lock:
            if len(cache) > 1000:
                cache.clear()
            cache[workflow_id] = found
    return found


def _allocate(connection: Connection, count: int) -> range:
    last = connection.execute(update(id_counter).where(id_counter.c.name == "ids").values(
        value=id_counter.c.value + count).returning(id_counter.c.value)).scalar_one()
    return range(last - count + 1, last + 1)


def succeeded(status: str, spec: dict[str, Any], execution: dict[str, Any]) -> bool:
    """Whether a finished job lets the jobs that depend on it run: completed, with every task's
    exit code 0 (unless its policies say reportJobSuccessOnTaskFailure)."""
    if status != JobStatus.COMPLETED:
        return False
    if (spec.get("policies") or {}).get("reportJobSuccessOnTaskFailure"):
        return True
    return all(task.get("exitCode", 0) == 0 for task in execution.get("tasks", ()))


def _in_ranges(index: int, ranges: list[list[int]]) -> bool:
    return any(a <= index <= b for a, b in ranges)


def _ranges(indices: Iterable[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def _job_row(spec: WorkflowSpec, workflow: Any, job: str, index: int | None, blocked: bool, now: int,
             extra: dict[str, Any]) -> dict[str, Any]:
    js = instance_spec(spec, workflow.id, job, index)
    demand = js.demand()
    queue_limit = demand.pop("queue_limit_s")
    parents = spec.graph().parents[job]
    return {
        "owner": workflow.owner, "name": js.name, "status": JobStatus.IDLE,
        "status_reason": BLOCKED.format(jobs=", ".join(parents)) if blocked else StatusReason.WAITING,
        "spec": js.to_stored(), "workflow_id": workflow.id, "in_queue": True, "create_time": now,
        "start_time": None, "end_time": None, "execution": {}, "node_id": None, "attempt": 0, "retries": 0,
        **demand, "queue_deadline": now + queue_limit if queue_limit and not blocked else None,
        "wf_job": job, "wf_instance": index, "blocked": blocked, "wf_pending": True,
        "parameters": instance_parameters(spec, job, index),
        "owner_groups": list(workflow.owner_groups or ()),  # the workflow's submitter's groups
        # Its own `notifications` (jobFinished), each instance and attempt being a job; e-mails go
        # to the workflow's submitter (the workflow row keeps the address: notify.py).
        "notify_pending": bool(js.notifications),
        "notify_email": workflow.notify_email if any(n.type == "email" for n in js.notifications or ()) else None,
        **extra,
    }


def _insert_jobs(connection: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        ids = _allocate(connection, len(rows))
        connection.execute(insert(jobs), [dict(row, id=i) for i, row in zip(ids, rows)])


def create(connection: Connection, owner: str, spec: WorkflowSpec, now: int, rerun_of: int | None = None,
           done_before: dict[str, list[list[int]]] | None = None, job_extra: dict[str, Any] | None = None,
           max_idle: int = WORKFLOW_MAX_IDLE, notify: dict[str, Any] | None = None,
           groups: Iterable[str] = ()) -> int:
    """Store the workflow and its first jobs in the caller's transaction; returns its id.
    `done_before` (a re-run): per job, the instances (ranges of indices) that already completed.
    `notify`: the workflow's notify_pending and notify_email (gateway/services/notify.py).
    `groups`: the submitting token's, kept with the workflow and given to each of its jobs."""
    [workflow_id] = _allocate(connection, 1)
    graph = spec.graph()
    done_before = done_before or {}
    state: dict[str, dict[str, Any]] = {}
    for name in graph.parents:
        done = done_before.get(name) or []
        count = sum(b - a + 1 for a, b in done)
        state[name] = {"created": count, "ok": count, "failed": 0, "skipped": 0, "next": 0, "done": done}
    connection.execute(insert(workflows).values(
        id=workflow_id, owner=owner, name=spec.name, status="idle", status_reason="", spec=spec.to_stored(),
        state=state, total=sum(graph.totals.values()), in_queue=True, create_time=now, rerun_of=rerun_of,
        owner_groups=list(dict.fromkeys(groups)), **(notify or {})))
    workflow = connection.execute(select(workflows.c.id, workflows.c.owner, workflows.c.notify_email,
                                         workflows.c.owner_groups).where(
        workflows.c.id == workflow_id)).one()
    with _specs_lock:
        _specs.setdefault(connection.engine, {})[workflow_id] = spec
    rows = []
    for name in graph.parents:
        if name not in graph.factories and not state[name]["ok"]:
            rows.append(_job_row(spec, workflow, name, None, True, now, job_extra or {}))
            state[name]["created"] = 1
    _insert_jobs(connection, rows)
    connection.execute(update(workflows).where(workflows.c.id == workflow_id).values(state=state))
    _advance_one(connection, workflow_id, [], now, max_idle, job_extra or {})
    return workflow_id


def _live(connection: Connection, workflow_ids: list[int]) -> dict[int, dict[str, dict[str, int]]]:
    """Per workflow and job: its idle (released), blocked and running rows."""
    found: dict[int, dict[str, dict[str, int]]] = {}
    if not workflow_ids:
        return found
    for row in connection.execute(
            select(jobs.c.workflow_id, jobs.c.wf_job, jobs.c.status, jobs.c.blocked, func.count().label("n"))
            .where(jobs.c.workflow_id.in_(workflow_ids), jobs.c.status.in_(ACTIVE))
            .group_by(jobs.c.workflow_id, jobs.c.wf_job, jobs.c.status, jobs.c.blocked)):
        counts = found.setdefault(row.workflow_id, {}).setdefault(row.wf_job, {"idle": 0, "blocked": 0, "running": 0})
        key = "running" if row.status == JobStatus.RUNNING else ("blocked" if row.blocked else "idle")
        counts[key] += row.n
    return found


def progress_of(state: dict[str, Any], live: dict[str, dict[str, int]], total: int) -> dict[str, int]:
    """The reference's `progress`: total, done, failed, queued (idle or running), waiting (the rest)."""
    done = sum(s["ok"] for s in state.values())
    failed = sum(s["failed"] for s in state.values())
    queued = sum(c["idle"] + c["running"] for c in live.values())
    return {"total": total, "done": done, "failed": failed, "queued": queued,
            "waiting": max(0, total - done - failed - queued)}


def live_counts(connection: Connection, workflow_ids: list[int]) -> dict[int, dict[str, dict[str, int]]]:
    return _live(connection, workflow_ids)


def _advance_one(connection: Connection, workflow_id: int, finished_rows: list[Any], now: int, max_idle: int,
                 job_extra: dict[str, Any]) -> None:
    workflow = connection.execute(select(workflows).where(
        workflows.c.id == workflow_id).with_for_update()).first()
    if workflow is None or workflow.status not in ACTIVE:
        if finished_rows:
            connection.execute(update(jobs).where(jobs.c.id.in_([r.id for r in finished_rows])).values(
                wf_pending=False))
        return
    spec = spec_of(connection, workflow.id, workflow.spec)
    graph = spec.graph()
    state = copy.deepcopy(workflow.state)
    retries_allowed = (spec.policies.maximumRetries or 0) if spec.policies else 0
    retry_rows = []
    for row in finished_rows:
        s = state[row.wf_job]
        if succeeded(row.status, row.spec, row.execution):
            s["ok"] += 1
            continue
        tries = connection.execute(select(func.count()).select_from(jobs).where(
            jobs.c.workflow_id == workflow.id, jobs.c.wf_job == row.wf_job,
            jobs.c.wf_instance.is_(None) if row.wf_instance is None else jobs.c.wf_instance == row.wf_instance
        )).scalar_one()
        if row.status != JobStatus.DELETED and tries <= retries_allowed:
            retry_rows.append(_job_row(spec, workflow, row.wf_job, row.wf_instance, False, now, job_extra))
        else:
            s["failed"] += 1
    if finished_rows:
        connection.execute(update(jobs).where(jobs.c.id.in_([r.id for r in finished_rows])).values(wf_pending=False))
    _insert_jobs(connection, retry_rows)
    live = _live(connection, [workflow.id]).get(workflow.id, {})
    progress = {name: JobProgress(created=state[name]["created"], ok=state[name]["ok"], failed=state[name]["failed"],
                                  skipped=state[name]["skipped"], **live.get(name, {}))
                for name in graph.parents}
    decision = step(graph, progress, max_idle)
    if decision.release:
        # maximumTimeInQueue counts from the release: a blocked job's clock has not started (its
        # queue_deadline is None until now). All instances of a job share its template's policy.
        limits: dict[int | None, list[str]] = {}
        for name in decision.release:
            limits.setdefault(spec.template(name).demand()["queue_limit_s"], []).append(name)
        for limit, names in limits.items():
            connection.execute(update(jobs).where(
                jobs.c.workflow_id == workflow.id, jobs.c.wf_job.in_(names), jobs.c.blocked.is_(True),
                jobs.c.status == JobStatus.IDLE).values(blocked=False, status_reason=StatusReason.WAITING,
                                                        queue_deadline=now + limit if limit else None))
    if decision.stop:
        leave = bool(spec.policies and spec.policies.leaveInQueue)
        connection.execute(update(jobs).where(
            jobs.c.workflow_id == workflow.id, jobs.c.wf_job.in_(decision.stop), jobs.c.blocked.is_(True),
            jobs.c.status == JobStatus.IDLE).values(
                status=JobStatus.FAILED, status_reason=NOT_RUN, end_time=now, blocked=False, wf_pending=False,
                in_queue=leave))
        for name in decision.stop:
            s, c = state[name], live.get(name, {})
            s["skipped"] = graph.totals[name] - s["ok"] - s["failed"] - c.get("idle", 0) - c.get("running", 0)
    rows = []
    for name, count in decision.create.items():
        s = state[name]
        while count > 0 and s["next"] < graph.totals[name]:
            index = s["next"]
            s["next"] += 1
            if _in_ranges(index, s["done"]):
                continue
            rows.append(_job_row(spec, workflow, name, index, False, now, job_extra))
            s["created"] += 1
            count -= 1
    _insert_jobs(connection, rows)
    values: dict[str, Any] = {"state": state, "status": decision.status}
    if decision.status != "idle" and workflow.start_time is None:
        values["start_time"] = now
    if decision.status in ("completed", "failed"):
        values["end_time"] = now
        values["in_queue"] = bool(spec.policies and spec.policies.leaveInQueue)
        if decision.status == "failed":
            values["status_reason"] = "Some jobs of the workflow did not complete successfully"
    if values != {"state": workflow.state, "status": workflow.status}:
        connection.execute(update(workflows).where(workflows.c.id == workflow.id).values(**values))


def advance(engine: Engine, now: int, max_idle: int = WORKFLOW_MAX_IDLE) -> int:
    """Move every workflow that has something to do on (each in its own transaction): those with
    finished jobs not counted yet, room for more idle jobs and instances left to create, or a
    status to change. Returns how many workflows were looked at."""
    with engine.connect() as connection:
        finished = connection.execute(
            select(jobs.c.id, jobs.c.workflow_id, jobs.c.wf_job, jobs.c.wf_instance, jobs.c.status, jobs.c.spec,
                   jobs.c.execution)
            .where(jobs.c.wf_pending.is_(True), jobs.c.end_time.is_not(None))).all()
        active = connection.execute(select(workflows.c.id, workflows.c.status, workflows.c.state, workflows.c.total)
                                    .where(workflows.c.status.in_(ACTIVE))).all()
        live = _live(connection, [w.id for w in active])
    by_workflow: dict[int, list[Any]] = {}
    for row in finished:
        by_workflow.setdefault(row.workflow_id, []).append(row)
    todo = set(by_workflow)
    for w in active:
        counts = live.get(w.id, {})
        idle = sum(c["idle"] for c in counts.values())
        running = sum(c["running"] for c in counts.values())
        creatable = sum(s["created"] for s in w.state.values()) < w.total
        if (creatable and idle < max_idle) or (w.status == "idle" and running) or not counts:
            todo.add(w.id)
    for workflow_id in sorted(todo):
        with engine.begin() as connection:
            _advance_one(connection, workflow_id, by_workflow.get(workflow_id, []), now, max_idle, {})
    return len(todo)


def stop_jobs(connection: Connection, workflow_id: int, now: int) -> None:
    """A deleted workflow's jobs that have not finished end `deleted` (their agents stop them)."""
    for row in connection.execute(select(jobs.c.id, jobs.c.spec).where(
            jobs.c.workflow_id == workflow_id, jobs.c.status.in_(ACTIVE))).all():
        connection.execute(update(jobs).where(jobs.c.id == row.id, jobs.c.status.in_(ACTIVE)).values(
            status=JobStatus.DELETED, status_reason=JOB_OF_DELETED_WORKFLOW, end_time=now, blocked=False,
            wf_pending=False, in_queue=bool((row.spec.get("policies") or {}).get("leaveInQueue"))))


def completed_instances(connection: Connection, workflow: Any) -> dict[str, list[list[int]]]:
    """Per job of the workflow: the instances that completed successfully (ranges of indices; a
    job outside a factory is instance 0), including those its own re-run source had done."""
    done: dict[str, set[int]] = {}
    for name, s in workflow.state.items():
        for a, b in s.get("done", []):
            done.setdefault(name, set()).update(range(a, b + 1))
    for row in connection.execute(select(jobs.c.wf_job, jobs.c.wf_instance, jobs.c.status, jobs.c.spec,
                                         jobs.c.execution).where(
            and_(jobs.c.workflow_id == workflow.id, jobs.c.status == JobStatus.COMPLETED))):
        if succeeded(row.status, row.spec, row.execution):
            done.setdefault(row.wf_job, set()).add(row.wf_instance or 0)
    return {name: _ranges(indices) for name, indices in done.items() if indices}
