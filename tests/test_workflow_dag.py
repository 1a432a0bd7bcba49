"""The workflow's pure decisions (schema/dag.py) and factories (schema/workflowspec.py), without I/O."""
import pytest

from schema.dag import Graph, JobProgress, cycle_of, step
from schema.errors import InvalidInput
from schema.workflowspec import instance_spec, parse_workflow

DIAMOND = Graph({"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}, {"a": 1, "b": 1, "c": 1, "d": 1})


def progress(**jobs: dict) -> dict[str, JobProgress]:
    return {name: JobProgress(**counts) for name, counts in jobs.items()}


def test_only_jobs_whose_dependencies_completed_are_released():
    start = progress(a={"created": 1, "blocked": 1}, b={"created": 1, "blocked": 1},
                     c={"created": 1, "blocked": 1}, d={"created": 1, "blocked": 1})
    assert step(DIAMOND, start, 100).release == ["a"]
    assert step(DIAMOND, start, 100).status == "idle"
    a_done = progress(a={"created": 1, "ok": 1}, b={"created": 1, "blocked": 1},
                      c={"created": 1, "blocked": 1}, d={"created": 1, "blocked": 1})
    decided = step(DIAMOND, a_done, 100)
    assert decided.release == ["b", "c"] and decided.status == "running"
    b_done = progress(a={"created": 1, "ok": 1}, b={"created": 1, "ok": 1},
                      c={"created": 1, "running": 1}, d={"created": 1, "blocked": 1})
    assert step(DIAMOND, b_done, 100).release == []  # d also waits for c
    all_done = progress(**{n: {"created": 1, "ok": 1} for n in "abcd"})
    assert step(DIAMOND, all_done, 100).status == "completed"


def test_a_failed_job_stops_its_descendants_and_the_workflow_fails_when_nothing_else_can_run():
    b_failed = progress(a={"created": 1, "ok": 1}, b={"created": 1, "failed": 1},
                        c={"created": 1, "running": 1}, d={"created": 1, "blocked": 1})
    decided = step(DIAMOND, b_failed, 100)
    assert decided.stop == ["d"]
    assert decided.status == "running"  # c still runs
    c_done = progress(a={"created": 1, "ok": 1}, b={"created": 1, "failed": 1},
                      c={"created": 1, "ok": 1}, d={"created": 1, "skipped": 1})
    assert step(DIAMOND, c_done, 100).status == "failed"


def test_factory_instances_are_created_up_to_the_idle_cap():
    graph = Graph({"prep": (), "sweep": ("prep",)}, {"prep": 1, "sweep": 100_000}, frozenset({"sweep"}))
    waiting = progress(prep={"created": 1, "running": 1}, sweep={})
    assert step(graph, waiting, 20).create == {}  # the sweep waits for prep
    ready = progress(prep={"created": 1, "ok": 1}, sweep={"created": 30, "idle": 15, "running": 10, "ok": 5})
    assert step(graph, ready, 20).create == {"sweep": 5}
    full = progress(prep={"created": 1, "ok": 1}, sweep={"created": 30, "idle": 20, "running": 10})
    assert step(graph, full, 20).create == {}
    last = progress(prep={"created": 1, "ok": 1}, sweep={"created": 99_999, "ok": 99_999})
    assert step(graph, last, 20).create == {"sweep": 1}


def test_cycles_are_found_with_their_names():
    assert cycle_of(DIAMOND) is None
    cyclic = Graph({"a": ("c",), "b": ("a",), "c": ("b",)}, {"a": 1, "b": 1, "c": 1})
    cycle = cycle_of(cyclic)
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert cycle_of(Graph({"a": ("a",)}, {"a": 1})) == ["a", "a"]


def job(name: str, cmd: str = "echo $x", **extra) -> dict:
    return {"name": name, "resources": {"cpus": 1, "memory": 1}, "tasks": [{"image": "busybox", "cmd": cmd}], **extra}


def test_sweep_values_are_inclusive_and_the_first_parameter_is_outermost():
    spec = parse_workflow({"name": "w", "jobs": [job("s", "run ${x} $y", outputFiles=["out-$x-$y.txt"],
                                                     artifacts=[{"url": "https://example.org/in-$x.tgz"}])],
                           "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["s"], "parameters": [
                               {"name": "x", "start": 1, "end": 2, "step": 1},
                               {"name": "y", "start": 0.1, "end": 0.3, "step": 0.1}]}]})
    assert spec.graph().totals == {"s": 6}
    factory = spec.factory_of("s")
    assert [factory.parameters_of(i) for i in range(6)] == [
        {"x": 1, "y": 0.1}, {"x": 1, "y": 0.2}, {"x": 1, "y": 0.3},
        {"x": 2, "y": 0.1}, {"x": 2, "y": 0.2}, {"x": 2, "y": 0.3}]
    instance = instance_spec(spec, 7, "s", 5).to_stored()
    assert instance["name"] == "w/s/5"
    assert instance["tasks"][0]["cmd"] == "run 2 0.3"
    assert instance["tasks"][0]["env"] == {"PROMINENCE_PARAMETER_x": "2", "PROMINENCE_PARAMETER_y": "0.3",
                                           "PROMINENCE_WORKFLOW_ID": "7"}
    assert instance["outputFiles"] == ["out-2-0.3.txt"]
    assert instance["artifacts"] == [{"url": "https://example.org/in-2.tgz"}]


def test_zip_and_repeat():
    spec = parse_workflow({"jobs": [job("z", "echo $a $b"), job("r", "echo")], "factories": [
        {"type": "zip", "name": "f", "jobs": ["z"], "parameters": [{"name": "a", "values": [1, "two"]},
                                                                    {"name": "b", "values": [3.5, 4]}]},
        {"type": "repeat", "name": "g", "jobs": ["r"], "num": 3}]})  # num: the CLI's spelling
    assert spec.graph().totals == {"z": 2, "r": 3}
    assert instance_spec(spec, 1, "z", 1).tasks[0].cmd == "echo two 4"
    assert instance_spec(spec, 1, "r", 2).name == "/r/2"


def test_a_100000_point_sweep_costs_nothing_until_its_instances_are_made():
    spec = parse_workflow({"jobs": [job("s")], "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["s"],
                           "parameters": [{"name": "x", "start": 0, "end": 99_999, "step": 1}]}]})
    assert spec.graph().totals == {"s": 100_000}
    assert spec.factory_of("s").parameters_of(99_999) == {"x": 99_999}


@pytest.mark.parametrize("bad, words", [
    ({"jobs": [job("a")], "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["a"], "parameters": [
        {"name": n, "start": 1, "end": 2, "step": 1} for n in "abcde"]}]},
     "Currently only parameter sweeps up to 4D are supported"),
    ({"jobs": [job("a")], "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["a"], "parameters": [
        {"name": "x", "start": 1, "end": 2, "step": -1}]}]}, "step must go from start towards end"),
    ({"jobs": [job("a")], "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["a"], "parameters": [
        {"name": "x", "start": 1, "end": 2, "step": 0}]}]}, "step must not be 0"),
    ({"jobs": [job("a")], "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["a"], "parameters": [
        {"name": "x", "start": 1, "end": 2, "step": 1}, {"name": "x", "start": 1, "end": 2, "step": 1}]}]},
     "parameter names must be unique: x"),
    ({"jobs": [job("a")], "factories": [{"type": "repeat", "name": "f", "jobs": ["b"], "number": 2}]},
     "names a job that is not defined: b"),
    ({"jobs": [job("a", outputFiles=["$x"])], "factories": [{"type": "zip", "name": "f", "jobs": ["a"],
                                                             "parameters": [{"name": "x", "values": ["ok", ".."]}]}]},
     "instance 1 of factory f"),
    ({"jobs": [job("a/b")]}, "names of jobs in workflows may only hold"),
])
def test_bad_factories_are_refused_naming_the_problem(bad, words):
    with pytest.raises(InvalidInput) as raised:
        parse_workflow(bad)
    assert words in raised.value.message
