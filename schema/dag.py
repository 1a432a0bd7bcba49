"""A workflow's decisions: pure functions over its DAG and its jobs' counts, tested without I/O.

`step()` is the gate: a job may start only when every instance of every job it depends on
completed successfully; a failed job stops its descendants (they never run); factory instances
are created as they may run, at most `max_idle` of the workflow's jobs idle at once; and it says
the workflow's status. schema/workflowrun.py reads the counts, calls it and applies the answer.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Graph:
    parents: Mapping[str, tuple[str, ...]]  # job name -> the jobs it depends on (in description order)
    totals: Mapping[str, int]  # job name -> instances (1 outside a factory)
    factories: frozenset[str] = frozenset()  # jobs whose instances are created lazily

    def order(self) -> list[str]:
        """The jobs, parents before children (description order otherwise). Assumes no cycle."""
        done: dict[str, None] = {}

        def visit(name: str) -> None:
            if name in done:
                return
            for parent in self.parents[name]:
                visit(parent)
            done[name] = None
        for name in self.parents:
            visit(name)
        return list(done)

    def descendants(self, name: str) -> set[str]:
        children: dict[str, list[str]] = {n: [] for n in self.parents}
        for child, parents in self.parents.items():
            for parent in parents:
                children[parent].append(child)
        found: set[str] = set()
        todo = [name]
        while todo:
            for child in children[todo.pop()]:
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found


def cycle_of(graph: Graph) -> list[str] | None:
    """A cycle of the dependencies (its names, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for parent in graph.parents[name]:
            if state.get(parent) == 1:
                cycle = path[path.index(parent):] + [parent]
                return list(reversed(cycle))  # parent -> child order
            if parent not in state and (found := visit(parent)):
                return found
        path.pop()
        state[name] = 2
        return None
    for name in graph.parents:
        if name not in state and (found := visit(name)):
            return found
    return None


@dataclass
class JobProgress:
    """How far the instances of one job of the workflow are."""

    created: int = 0  # instances accounted for: rows made (or already done by the workflow re-run)
    ok: int = 0  # completed successfully
    failed: int = 0  # failed, killed, deleted, or completed with a task's non-zero exit code
    skipped: int = 0  # will never run: a job it depends on failed
    idle: int = 0  # rows waiting for a node (released)
    blocked: int = 0  # rows waiting for their dependencies
    running: int = 0


@dataclass
class Step:
    release: list[str] = field(default_factory=list)  # jobs whose blocked rows may start now
    create: dict[str, int] = field(default_factory=dict)  # job -> instances to create now
    stop: list[str] = field(default_factory=list)  # jobs that will never run (a dependency failed)
    status: str = "idle"  # the workflow's: idle, running, completed or failed


def step(graph: Graph, progress: Mapping[str, JobProgress], max_idle: int) -> Step:
    result = Step()
    budget = max_idle - sum(p.idle for p in progress.values())
    broken: set[str] = set()  # failed, or stopped: their descendants never run
    can_run = False
    for name in graph.order():
        p, total = progress[name], graph.totals[name]
        if p.failed or p.skipped:
            broken.add(name)
        if any(parent in broken for parent in graph.parents[name]):
            broken.add(name)
            if p.ok + p.failed + p.skipped + p.idle + p.running < total:
                result.stop.append(name)
            continue
        if p.idle or p.running:
            can_run = True
        if not all(progress[parent].ok == graph.totals[parent] for parent in graph.parents[name]):
            if p.blocked or p.created < total:
                can_run = True  # waits for its dependencies, which may still complete
            continue
        if p.blocked:
            result.release.append(name)
            budget -= p.blocked
            can_run = True
        if p.created < total:
            can_run = True
            if budget > 0:
                result.create[name] = min(budget, total - p.created)
                budget -= result.create[name]
    if all(progress[name].ok == total for name, total in graph.totals.items()):
        result.status = "completed"
    elif not can_run:
        result.status = "failed"
    elif any(p.running or p.ok or p.failed for p in progress.values()):
        result.status = "running"
    else:
        result.status = "idle"
    return result
