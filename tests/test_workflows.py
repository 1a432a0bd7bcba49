"""/v1/workflows (reference sections 1.2 and 4) on SQLite and PostgreSQL: submission, listing,
the dependency gate and factories (the engine, schema/workflowrun.py, is stepped by hand here, as
the provisioner's tick does), delete, re-run, clone, remove, stdout of a workflow's jobs."""
import time

import pytest
from sqlalchemy import select, update

from gateway.services.jobs import output_path
from schema import workflowrun
from schema.tables import jobs


def job(name: str, cmd: str = "echo hi", **extra) -> dict:
    return {"name": name, "resources": {"cpus": 1, "memory": 1}, "tasks": [{"image": "busybox", "cmd": cmd}], **extra}


DIAMOND = {"name": "diamond", "jobs": [job("a"), job("b"), job("c"), job("d")],
           "dependencies": {"a": ["b", "c"], "b": ["d"], "c": ["d"]}}


def sweep(points: int, name: str = "sweep", **extra) -> dict:
    return {"name": name, "jobs": [job("s", "echo $x")], **extra, "factories": [
        {"type": "parameterSweep", "name": "f", "jobs": ["s"],
         "parameters": [{"name": "x", "start": 1, "end": points, "step": 1}]}]}


def submit(api, workflow: dict) -> int:
    response = api.request("POST", "/workflows", json=workflow)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def engine(api):
    return api.client.app.state.engine


def advance(api) -> None:
    workflowrun.advance(engine(api), int(time.time()))


def wf_jobs(api, workflow_id: int) -> dict[str, dict]:
    response = api.request("GET", f"/jobs?workflow=true&id={workflow_id}&detail=true")
    assert response.status_code == 200, response.text
    return {j["name"]: j for j in response.json()}


def finish(api, job_id: int, status: str = "completed", exit_code: int = 0) -> None:
    """What an agent's report does to a job (gateway/services/agent.py finish)."""
    with engine(api).begin() as connection:
        connection.execute(update(jobs).where(jobs.c.id == job_id).values(
            status=status, end_time=int(time.time()), in_queue=False, execution={"tasks": [{"exitCode": exit_code}]}))
    advance(api)


def workflow(api, workflow_id: int) -> dict:
    [found] = api.request("GET", f"/workflows/{workflow_id}").json()
    return found


def test_a_workflow_is_stored_with_its_jobs_named_and_gated(api):
    workflow_id = submit(api, DIAMOND)
    found = workflow(api, workflow_id)
    assert found["id"] == workflow_id and found["name"] == "diamond" and found["status"] == "idle"
    assert found["jobs"][0]["tasks"] == [{"image": "busybox", "runtime": "singularity", "cmd": "echo hi"}]
    assert found["dependencies"] == DIAMOND["dependencies"]
    assert found["progress"] == {"total": 4, "done": 0, "failed": 0, "queued": 1, "waiting": 3}
    listed = wf_jobs(api, workflow_id)
    assert sorted(listed) == ["diamond/a", "diamond/b", "diamond/c", "diamond/d"]
    assert all(j["status"] == "idle" for j in listed.values())
    assert listed["diamond/a"]["statusReason"] == "Waiting for resources"
    assert listed["diamond/d"]["statusReason"] == "Waiting for the jobs it depends on: b, c"
    assert all(j["id"] > workflow_id for j in listed.values())  # one counter for jobs and workflows
    # The scheduler sees only a: the gate.
    with engine(api).connect() as connection:
        waiting = connection.execute(select(jobs.c.name).where(jobs.c.blocked.is_(False),
                                                               jobs.c.workflow_id == workflow_id)).scalars().all()
    assert waiting == ["diamond/a"]
    [row] = api.request("GET", "/workflows").json()
    assert set(row) == {"name", "id", "status", "events", "progress"}


def test_the_diamond_runs_in_order_and_completes(api):
    workflow_id = submit(api, DIAMOND)
    ids = {name.split("/")[1]: j["id"] for name, j in wf_jobs(api, workflow_id).items()}
    finish(api, ids["a"])
    listed = wf_jobs(api, workflow_id)
    assert listed["diamond/b"]["statusReason"] == "Waiting for resources"
    assert listed["diamond/d"]["statusReason"].startswith("Waiting for the jobs it depends on")
    assert workflow(api, workflow_id)["status"] == "running"
    finish(api, ids["b"])
    assert wf_jobs(api, workflow_id)["diamond/d"]["statusReason"].startswith("Waiting for the jobs")
    finish(api, ids["c"])
    assert wf_jobs(api, workflow_id)["diamond/d"]["statusReason"] == "Waiting for resources"
    finish(api, ids["d"])
    done = workflow(api, workflow_id)
    assert done["status"] == "completed"
    assert done["progress"] == {"total": 4, "done": 4, "failed": 0, "queued": 0, "waiting": 0}
    assert "endTime" in done["events"]
    assert api.request("GET", "/workflows").json() == []  # finished: out of the default listing
    assert [w["id"] for w in api.request("GET", "/workflows?completed=true").json()] == [workflow_id]


def test_a_failure_stops_the_descendants_and_rerun_runs_only_what_failed(api):
    workflow_id = submit(api, DIAMOND)
    ids = {name.split("/")[1]: j["id"] for name, j in wf_jobs(api, workflow_id).items()}
    finish(api, ids["a"])
    finish(api, ids["b"], exit_code=1)  # completed, but its task failed: d never runs
    listed = wf_jobs(api, workflow_id)
    assert listed["diamond/d"]["status"] == "failed"
    assert listed["diamond/d"]["statusReason"] == workflowrun.NOT_RUN
    assert workflow(api, workflow_id)["status"] == "running"  # c still may run
    finish(api, ids["c"])
    failed = workflow(api, workflow_id)
    assert failed["status"] == "failed"
    assert failed["progress"] == {"total": 4, "done": 2, "failed": 1, "queued": 0, "waiting": 1}

    response = api.request("PUT", f"/workflows/{workflow_id}")
    assert response.status_code == 200, response.text
    rerun = response.json()["id"]
    assert rerun > workflow_id
    assert sorted(wf_jobs(api, rerun)) == ["diamond/b", "diamond/d"]  # a and c completed before
    again = workflow(api, rerun)
    assert again["progress"] == {"total": 4, "done": 2, "failed": 0, "queued": 1, "waiting": 1}
    assert workflow(api, workflow_id)["progress"]["failed"] == 1  # the old id keeps its counts
    new = {name.split("/")[1]: j["id"] for name, j in wf_jobs(api, rerun).items()}
    finish(api, new["b"])
    finish(api, new["d"])
    assert workflow(api, rerun)["status"] == "completed"
    # Only finished workflows are re-run.
    running = submit(api, DIAMOND)
    response = api.request("PUT", f"/workflows/{running}")
    assert response.status_code == 400
    assert "not in a suitable state" in response.json()["error"]


def queue_deadline(api, job_id: int) -> int | None:
    with engine(api).connect() as connection:
        return connection.execute(select(jobs.c.queue_deadline).where(jobs.c.id == job_id)).scalar_one()


def test_maximum_time_in_queue_starts_when_a_blocked_job_is_released(api):
    """A job waiting for its dependencies is not queued yet: its maximumTimeInQueue counts from
    its release, and the provisioner's expiry (`_expire_queued`) leaves it alone until then."""
    from gateway.app import build_provisioner
    from schema.credentials import CredentialBox
    from schema.identity import TokenAuthority
    from schema.signals import Signal
    spec = {"name": "queued", "jobs": [job("a"), job("b", policies={"maximumTimeInQueue": 2}),
                                       job("f", policies={"maximumTimeInQueue": 2})],
            "dependencies": {"a": ["b", "f"]},
            "factories": [{"type": "repeat", "name": "r", "jobs": ["f"], "number": 2}]}
    workflow_id = submit(api, spec)
    ids = {name.split("/", 1)[1]: j["id"] for name, j in wf_jobs(api, workflow_id).items()}
    assert sorted(ids) == ["a", "b"]  # f's instances are made when they may run
    assert queue_deadline(api, ids["b"]) is None  # blocked: its clock has not started
    provisioner = build_provisioner(api.settings, engine(api), TokenAuthority(api.settings.secret),
                                    CredentialBox.for_data_dir(api.settings.data_dir), Signal(), Signal())
    try:
        provisioner._expire_queued(time.time() + 86400)  # a day later, b still waits for a
        assert wf_jobs(api, workflow_id)["queued/b"]["status"] == "idle"
        released_at = int(time.time())
        finish(api, ids["a"])
        listed = wf_jobs(api, workflow_id)
        assert listed["queued/b"]["statusReason"] == "Waiting for resources"
        deadline = queue_deadline(api, ids["b"])
        assert released_at + 120 <= deadline <= int(time.time()) + 120
        for instance in ("queued/f/0", "queued/f/1"):  # created at the release: the same clock
            assert released_at + 120 <= queue_deadline(api, listed[instance]["id"]) <= int(time.time()) + 120
        provisioner._expire_queued(deadline - 1)
        assert wf_jobs(api, workflow_id)["queued/b"]["status"] == "idle"
        provisioner._expire_queued(deadline)
        advance(api)
    finally:
        provisioner.stop()
    listed = wf_jobs(api, workflow_id)
    assert listed["queued/b"]["status"] == "failed"
    assert listed["queued/b"]["statusReason"] == "Maximum time queued was exceeded"
    assert workflow(api, workflow_id)["status"] == "failed"


def fail_idle_jobs(api, workflow_id: int) -> None:
    for listed in wf_jobs(api, workflow_id).values():
        if listed["status"] == "idle":
            finish(api, listed["id"], "failed")


def test_maximum_reruns_counts_the_reruns_along_the_chain(api):
    spec = {"name": "flaky", "jobs": [job("a"), job("b")], "dependencies": {"a": ["b"]},
            "policies": {"maximumReruns": 2}}
    original = submit(api, spec)
    fail_idle_jobs(api, original)
    assert workflow(api, original)["status"] == "failed"
    response = api.request("PUT", f"/workflows/{original}")
    assert response.status_code == 200, response.text
    first = response.json()["id"]
    fail_idle_jobs(api, first)
    response = api.request("PUT", f"/workflows/{first}")  # a re-run of a re-run: the second
    assert response.status_code == 200, response.text
    second = response.json()["id"]
    fail_idle_jobs(api, second)
    assert workflow(api, second)["status"] == "failed"
    stored = len(api.request("GET", "/workflows?all=true").json())
    for refused in (second, first, original):  # the third re-run, whichever workflow of the chain it starts from
        response = api.request("PUT", f"/workflows/{refused}")
        assert response.status_code == 400, response.text
        assert response.json() == {"error": f"Unable to re-run workflow {refused}: its policy maximumReruns allows "
                                            f"2 re-runs of workflow {original} (re-runs of re-runs included), and "
                                            f"it has had 2"}
    assert len(api.request("GET", "/workflows?all=true").json()) == stored  # nothing stored
    # GraphQL's rerunWorkflow goes through the same rule.
    refused = graphql(api, f'mutation {{ rerunWorkflow(id: "{second}") {{ id }} }}')
    assert refused["errors"][0]["extensions"]["code"] == "INVALID_STATE"
    assert "maximumReruns" in refused["errors"][0]["message"]
    # Two re-runs of the same workflow count as two; a clone starts afresh.
    again = submit(api, {**spec, "policies": {"maximumReruns": 1}})
    fail_idle_jobs(api, again)
    assert api.request("PUT", f"/workflows/{again}").status_code == 200
    response = api.request("PUT", f"/workflows/{again}")
    assert response.status_code == 400 and "allows 1 re-run of" in response.json()["error"]
    clone = api.request("PUT", f"/workflows/{again}/clone").json()["id"]
    fail_idle_jobs(api, clone)
    assert api.request("PUT", f"/workflows/{clone}").status_code == 200
    # 0: never re-run; no policy: no limit (the tests above re-run freely).
    never = submit(api, {**spec, "policies": {"maximumReruns": 0}})
    fail_idle_jobs(api, never)
    response = api.request("PUT", f"/workflows/{never}")
    assert response.status_code == 400 and "allows 0 re-runs" in response.json()["error"]


def test_a_sweep_of_100000_points_does_not_flood_the_queue(api):
    started = time.monotonic()
    workflow_id = submit(api, sweep(100_000))
    assert time.monotonic() - started < 5
    assert len(wf_jobs(api, workflow_id)) == workflowrun.WORKFLOW_MAX_IDLE
    assert workflow(api, workflow_id)["progress"] == {"total": 100_000, "done": 0, "failed": 0,
                                                      "queued": workflowrun.WORKFLOW_MAX_IDLE,
                                                      "waiting": 100_000 - workflowrun.WORKFLOW_MAX_IDLE}
    first = wf_jobs(api, workflow_id)["sweep/s/0"]
    finish(api, first["id"])
    listed = wf_jobs(api, workflow_id)
    assert len(listed) == workflowrun.WORKFLOW_MAX_IDLE + 1
    assert listed[f"sweep/s/{workflowrun.WORKFLOW_MAX_IDLE}"]["parameters"] == {"x": workflowrun.WORKFLOW_MAX_IDLE + 1}
    assert workflow(api, workflow_id)["progress"]["done"] == 1


def test_a_2d_sweep_with_parameters_in_cmd_env_and_outputs(api):
    spec = {"name": "grid", "jobs": [job("g", "echo ${a}x$b", outputFiles=["out-$a-$b.txt"])], "factories": [
        {"type": "parameterSweep", "name": "f", "jobs": ["g"], "parameters": [
            {"name": "a", "start": 1, "end": 2, "step": 1}, {"name": "b", "start": 0, "end": 1, "step": 0.5}]}]}
    listed = wf_jobs(api, submit(api, spec))
    assert sorted(listed) == [f"grid/g/{i}" for i in range(6)]
    last = listed["grid/g/5"]
    assert last["parameters"] == {"a": 2, "b": 1}
    assert last["tasks"][0]["cmd"] == "echo 2x1"
    assert last["tasks"][0]["env"]["PROMINENCE_PARAMETER_b"] == "1"
    assert last["outputFiles"] == [{"name": "out-2-1.txt", "url": ""}]


def test_workflow_policies_reach_its_jobs_and_failed_jobs_are_retried(api):
    spec = {"name": "p", "jobs": [job("a"), job("b", policies={"leaveInQueue": False})],
            "policies": {"maximumRetries": 1, "leaveInQueue": True,
                         "placement": {"requirements": {"sites": ["local"]}}}}
    workflow_id = submit(api, spec)
    listed = wf_jobs(api, workflow_id)
    assert listed["p/a"]["policies"] == {"leaveInQueue": True, "placement": {"requirements": {"sites": ["local"]}}}
    assert listed["p/b"]["policies"]["leaveInQueue"] is False
    finish(api, listed["p/a"]["id"], "failed")
    retried = [j for j in api.request("GET", f"/jobs?workflow=true&id={workflow_id}").json() if j["name"] == "p/a"]
    assert [j["status"] for j in retried] == ["failed", "idle"]  # maximumRetries: a new attempt
    finish(api, retried[1]["id"], "failed")
    finish(api, listed["p/b"]["id"])
    assert workflow(api, workflow_id)["status"] == "failed"
    assert [w["id"] for w in api.request("GET", "/workflows").json()] == [workflow_id]  # leaveInQueue
    assert api.request("PUT", f"/workflows/{workflow_id}/remove").json() == {}
    assert api.request("GET", "/workflows").json() == []
    response = api.request("PUT", f"/workflows/{workflow_id}/remove")
    assert response.status_code == 400 and response.json() == {"error": "Workflow is no longer in the queue"}


def test_delete_stops_its_jobs_and_clone_resubmits(api):
    workflow_id = submit(api, DIAMOND)
    assert api.request("DELETE", f"/workflows/{workflow_id}").json() == {}
    deleted = workflow(api, workflow_id)
    assert deleted["status"] == "deleted" and deleted["statusReason"] == "Workflow deleted by user"
    for listed in wf_jobs(api, workflow_id).values():
        assert listed["status"] == "deleted"
        assert listed["statusReason"] == "Job part of a workflow which was deleted by user"
    response = api.request("DELETE", f"/workflows/{workflow_id}")
    assert response.status_code == 400
    response = api.request("PUT", f"/workflows/{workflow_id}/clone")
    assert response.status_code == 201, response.text
    clone = response.json()["id"]
    assert workflow(api, clone)["status"] == "idle" and len(wf_jobs(api, clone)) == 4
    two = [submit(api, DIAMOND), submit(api, DIAMOND)]
    assert api.request("DELETE", f"/workflows?id={two[0]},{two[1]}").json() == {}
    assert api.request("DELETE", "/workflows").status_code == 400


def test_other_users_and_unknown_workflows(api):
    workflow_id = submit(api, DIAMOND)
    assert api.request("GET", f"/workflows/{workflow_id}", user="bob").json() == []
    assert api.request("GET", "/workflows", user="bob").json() == []
    assert api.request("GET", f"/jobs?workflow=true&id={workflow_id}", user="bob").json() == []
    response = api.request("DELETE", f"/workflows/{workflow_id}", user="bob")  # as unknown: ids not revealed
    assert response.status_code == 400 and response.json() == {"error": "No such workflow(s)"}
    for path in ("", "/clone", "/remove", "/a/stdout"):
        response = api.request("GET" if "stdout" in path else "PUT", f"/workflows/{workflow_id}{path}", user="bob")
        assert response.status_code == 403, response.text
    assert api.request("GET", "/workflows/999999").json() == []
    assert api.request("DELETE", "/workflows/999999").json() == {"error": "No such workflow(s)"}
    assert api.request("GET", "/workflows/999999/a/stdout").json() == {"error": "Workflow does not exist"}
    assert api.request("GET", "/workflows", user=None).status_code == 401


def test_stdout_of_a_job_and_of_a_factory_instance(api):
    workflow_id = submit(api, {"name": "out", "jobs": [job("one"), job("many")],
                               "factories": [{"type": "repeat", "name": "r", "jobs": ["many"], "number": 3}]})
    listed = wf_jobs(api, workflow_id)
    data_dir = api.settings.data_dir
    for name, text in (("out/one", b"hello one\n"), ("out/many/2", b"hello two\n")):
        path = output_path(data_dir, listed[name]["id"], 0, "stdout")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
        err = output_path(data_dir, listed[name]["id"], 0, "stderr")
        err.write_bytes(b"err " + text)
    assert api.request("GET", f"/workflows/{workflow_id}/one/stdout?node=0&offset=0").text == "hello one\n"
    assert api.request("GET", f"/workflows/{workflow_id}/many/2/stdout").text == "hello two\n"
    assert api.request("GET", f"/workflows/{workflow_id}/many/2/stdout?offset=6").text == "two\n"
    # The CLI's stderr for workflows swaps the job and the node (reference 4.4).
    assert api.request("GET", f"/workflows/{workflow_id}/0/stderr?node=one&offset=0").text == "err hello one\n"
    assert api.request("GET", f"/workflows/{workflow_id}/0/2/stderr?node=many").text == "err hello two\n"
    assert api.request("GET", f"/workflows/{workflow_id}/many/1/stdout").status_code == 404  # none yet
    for path, words in (("nosuch/stdout", "no job named nosuch"), ("many/stdout", "name the instance"),
                        ("many/3/stdout", "instances 0 to 2"), ("one/0/stdout", "not a factory job")):
        response = api.request("GET", f"/workflows/{workflow_id}/{path}")
        assert response.status_code == 400 and words in response.json()["error"], response.text


@pytest.mark.parametrize("bad, words", [
    ({}, "jobs: is required"),
    ({"jobs": []}, "jobs"),
    ({"jobs": [job("a")], "labels": {"k": "v"}, "colour": "red"}, '"colour" is not an allowed field'),
    ({"jobs": [job("a"), job("a")]}, "all jobs must have unique names: a"),
    ({"jobs": [{"resources": {"cpus": 1, "memory": 1}, "tasks": [{"image": "busybox"}]}]}, "all jobs must have names"),
    ({"jobs": [job("a")], "dependencies": {"a": ["ghost"]}}, "not defined: ghost"),
    ({"jobs": [job("a")], "dependencies": {"ghost": ["a"]}}, "not defined: ghost"),
    ({"jobs": [job("a"), job("b")], "dependencies": {"a": ["b"], "b": ["a"]}}, "cycle: a -> b -> a"),
    ({"jobs": [job("a", resources={"cpus": 1})]}, "jobs[0].resources"),
    ({"jobs": [job("a", tasks=[{"image": "/etc/passwd"}])]}, "jobs[0].tasks[0].image"),
    ({"jobs": [job("a")], "policies": {"maximumRetries": 11}}, "policies.maximumRetries"),
    ({"jobs": [job("a")], "policies": {"priority": 1}}, '"policies.priority" is not an allowed field'),
    ({"jobs": [job("a")], "notifications": [{"event": "jobFinished", "type": "email"}]}, "notifications[0].event"),
    ({"jobs": [job("a")], "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["a"], "parameters": [
        {"name": n, "start": 1, "end": 2, "step": 1} for n in "abcde"]}]},
     "Currently only parameter sweeps up to 4D are supported"),
    ({"jobs": [job("a")], "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["a"], "parameters": [
        {"name": "x", "start": 1, "end": 1e9, "step": 1}]}]}, "more than 1000000"),
    ({"jobs": [job("a")], "factories": [{"type": "zip", "name": "f", "jobs": ["a"], "parameters": [
        {"name": "x", "values": [1, 2]}, {"name": "y", "values": [1]}]}]}, "same number of values"),
    ({"jobs": [job("a")], "factories": [{"type": "repeat", "name": "f", "jobs": ["a"], "number": 0}]},
     "factories[0].repeat.number"),
    ({"jobs": [job("a")], "factories": [{"type": "lottery", "name": "f", "jobs": ["a"]}]}, "factories[0]"),
    ({"jobs": [job("a")], "factories": [{"type": "repeat", "name": "f", "jobs": ["a"], "number": 2},
                                        {"type": "repeat", "name": "g", "jobs": ["a"], "number": 2}]},
     "job a is in two factories"),
])
def test_bad_workflows_are_refused_naming_the_field(api, bad, words):
    response = api.request("POST", "/workflows", json=bad)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"], response.json()
    assert api.request("GET", "/workflows?all=true").json() == []


def test_bad_bodies_and_queries(api):
    assert api.request("POST", "/workflows", content=b"{not json").status_code == 400
    assert api.request("POST", "/workflows", content=b"[]").status_code == 400
    assert api.request("POST", "/workflows", content=b"x" * (1 << 20 + 1)).status_code == 400
    assert api.request("GET", "/workflows?status=sleeping").status_code == 400
    assert api.request("GET", "/workflows?constraint=novalue").status_code == 400
    assert api.request("GET", "/workflows?id=1,x").status_code == 400
    assert api.request("GET", "/jobs?workflow=true").status_code == 400


def test_listing_filters(api):
    first = submit(api, {**DIAMOND, "labels": {"project": "p1"}})
    second = submit(api, {**DIAMOND, "name": "other"})
    assert [w["id"] for w in api.request("GET", "/workflows?constraint=project=p1").json()] == [first]
    assert [w["id"] for w in api.request("GET", "/workflows?name=other").json()] == [second]
    assert [w["id"] for w in api.request("GET", "/workflows?status=idle").json()] == [first, second]
    assert [w["id"] for w in api.request("GET", f"/workflows?id={second}").json()] == [second]
    assert "jobs" in api.request("GET", "/workflows?detail=true").json()[0]


# -- the real CLI against a live server ------------------------------------------------------------

@pytest.fixture
def live(tmp_path, database_url):
    from tests.live import LiveServer
    from tests.test_cli import Cli
    server = LiveServer(tmp_path / "data", database_url).start()
    try:
        yield server, Cli(server, tmp_path / "home")
    finally:
        server.stop()


def test_cli_run_list_describe_stdout_rerun(live, tmp_path):
    import json

    from schema.db import make_engine
    from tests.test_cli import parse_table
    server, cli = live
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"name": "clidag", "jobs": [job("first"), job("sweep", "echo $x")],
                              "dependencies": {"first": ["sweep"]},
                              "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["sweep"], "parameters": [
                                  {"name": "x", "start": 1, "end": 3, "step": 1}]}]}))
    out = cli("run", str(wf)).strip()
    assert out.startswith("Workflow created with id "), out
    workflow_id = int(out.removeprefix("Workflow created with id "))

    rows = parse_table(cli("list", "workflows"))
    assert set(rows) == {workflow_id}
    assert rows[workflow_id]["NAME"] == "clidag" and rows[workflow_id]["STATUS"] == "idle"
    assert (rows[workflow_id]["SUCCESS"], rows[workflow_id]["FAILED"], rows[workflow_id]["TOTAL"]) == ("0", "0", "4")
    described = json.loads(cli("describe", "workflow", str(workflow_id)))
    assert described["name"] == "clidag" and [j["name"] for j in described["jobs"]] == ["first", "sweep"]
    assert described["factories"][0]["parameters"][0]["end"] == 3
    jobs_table = parse_table(cli("list", "jobs", str(workflow_id)))
    assert [row["NAME"] for row in jobs_table.values()] == ["clidag/first"]  # the sweep waits for it

    db = make_engine(server.database_url)
    try:
        def finish_all(exit_code: int = 0) -> None:
            with db.begin() as connection:
                connection.execute(update(jobs).where(jobs.c.workflow_id.is_not(None), jobs.c.blocked.is_(False),
                                                      jobs.c.status == "idle").values(
                    status="completed", end_time=int(time.time()), in_queue=False,
                    execution={"tasks": [{"exitCode": exit_code}]}))
            workflowrun.advance(db, int(time.time()))
        finish_all()  # first
        listed = {j["name"]: j for j in httpx_get(server, f"/v1/jobs?workflow=true&id={workflow_id}")}
        assert sorted(listed) == ["clidag/first", "clidag/sweep/0", "clidag/sweep/1", "clidag/sweep/2"]
        for name, instance in (("clidag/sweep/1", "1"),):
            path = output_path(server.data_dir, listed[name]["id"], 0, "stdout")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("two\n")
            (path.parent / "stderr").write_text("oops\n")
            assert cli("stdout", str(workflow_id), "sweep", instance).strip() == "two"
            assert cli("stderr", str(workflow_id), "sweep", instance).strip() == "oops"
        finish_all(exit_code=1)
        rows = parse_table(cli("list", "workflows", "--completed"))
        assert rows[workflow_id]["STATUS"] == "failed"
        assert (rows[workflow_id]["SUCCESS"], rows[workflow_id]["FAILED"]) == ("1", "3")
        out = cli("rerun", str(workflow_id)).strip()
        assert out.startswith("Workflow created with id "), out
        rerun = int(out.removeprefix("Workflow created with id "))
        assert parse_table(cli("list", "workflows"))[rerun]["STATUS"] in ("idle", "running")
        assert cli("delete", "workflow", str(rerun)).strip() == "Success"
        assert parse_table(cli("list", "workflows", "--all"))[rerun]["STATUS"] == "deleted"
    finally:
        db.dispose()


def httpx_get(server, path: str):
    import httpx
    response = httpx.get(server.url + path, headers={"Authorization": f"Bearer {server.token()}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


# -- kill -9 during submissions ---------------------------------------------------------------------

def crash_workflow(client: int, seq: int) -> dict:
    """Three jobs in a chain and a factory of 2 after them: 5 jobs stored at submission."""
    return {"name": f"crash-c{client}-{seq}", "labels": {"client": str(client), "seq": str(seq)},
            "jobs": [job("a", f"echo {client} {seq}"), job("b"), job("c"), job("f", "echo $i")],
            "dependencies": {"a": ["b"], "b": ["c"]},
            "factories": [{"type": "zip", "name": "z", "jobs": ["f"], "parameters": [{"name": "i", "values": [1, 2]}]}]}


@pytest.mark.slow
def test_acknowledged_workflows_survive_kill_9_whole(tmp_path, database_url):
    import threading

    import httpx

    from tests.live import LiveServer
    data_dir = tmp_path / "data"
    server = LiveServer(data_dir, database_url).start()
    token = server.token("alice")
    stop = threading.Event()
    acknowledged: list[tuple[int, dict]] = []
    errors: list[str] = []

    def submitter(client: int) -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
            seq = 0
            while not stop.is_set():
                spec = crash_workflow(client, seq)
                seq += 1
                try:
                    response = http.post("/v1/workflows", json=spec)
                except httpx.TransportError:
                    return
                if response.status_code != 201:
                    errors.append(f"{response.status_code} {response.text}")
                    return
                acknowledged.append((response.json()["id"], spec))
    threads = [threading.Thread(target=submitter, args=(c,)) for c in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        server.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.kill()
    assert not errors, errors
    assert len(acknowledged) >= 4

    restarted = LiveServer(data_dir, database_url).start()
    try:
        with httpx.Client(base_url=restarted.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            stored = {w["id"]: w for w in http.get("/v1/workflows", params={"all": "true"}).json()}
            missing = sorted({i for i, _ in acknowledged} - set(stored))
            assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged workflows lost"
            for workflow_id, spec in acknowledged:
                assert stored[workflow_id]["name"] == spec["name"]
            # Every stored workflow (acknowledged or not) has all its jobs: none is partial.
            for workflow_id, found in stored.items():
                names = sorted(j["name"] for j in http.get(
                    "/v1/jobs", params={"workflow": "true", "id": str(workflow_id)}).json())
                prefix = found["name"]
                assert names == [f"{prefix}/a", f"{prefix}/b", f"{prefix}/c", f"{prefix}/f/0", f"{prefix}/f/1"], names
                assert found["progress"]["total"] == 5
    finally:
        restarted.stop()
    print(f"{database_url.split(':')[0]}: {len(acknowledged)} acknowledged workflows survived kill -9 whole")


# -- real containers on the local cloud -------------------------------------------------------------

@pytest.fixture(scope="module")
def local_cloud(tmp_path_factory):
    import httpx

    from provisioner.drivers.local import LocalNodeDriver
    from tests.images import busybox_image
    from tests.live import LiveServer
    image = busybox_image()
    root = tmp_path_factory.mktemp("wf-e2e")
    live = LiveServer(root / "data", f"sqlite:///{root / 'state.db'}", provisioner=True,
                      extra_args=("--idle-timeout", "120", "--local-cpus", "2", "--local-memory-mb", "4096"))
    with live:
        with httpx.Client(base_url=live.url + "/v1", headers={"Authorization": f"Bearer {live.token()}"},
                          timeout=30) as http:
            yield http, image
    driver = LocalNodeDriver(str(live.data_dir / "nodes"))
    for node in driver.list_nodes():
        driver.destroy_node(node)


def wait_workflow(http, workflow_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [found] = http.get(f"/workflows/{workflow_id}").json()
        if found["status"] in ("completed", "failed", "deleted"):
            return found
        time.sleep(0.5)
    raise AssertionError(f"workflow {workflow_id} still {found['status']} {found['progress']} after {timeout} s")


def e2e_job(image: str, name: str, cmd: str) -> dict:
    return {"name": name, "resources": {"cpus": 1, "memory": 0.25, "disk": 1},
            "tasks": [{"image": image, "cmd": cmd}]}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_diamond_runs_in_dependency_order_on_the_local_cloud(local_cloud):
    http, image = local_cloud
    stamp = "sh -c 'echo {name} $PROMINENCE_WORKFLOW_ID'"
    spec = {"name": "e2e-diamond", "jobs": [e2e_job(image, n, stamp.format(name=n)) for n in "abcd"],
            "dependencies": {"a": ["b", "c"], "b": ["d"], "c": ["d"]}}
    response = http.post("/workflows", json=spec)
    assert response.status_code == 201, response.text
    workflow_id = response.json()["id"]
    done = wait_workflow(http, workflow_id)
    assert done["status"] == "completed", done
    assert done["progress"] == {"total": 4, "done": 4, "failed": 0, "queued": 0, "waiting": 0}
    listed = {j["name"].split("/")[1]: j for j in http.get(
        "/jobs", params={"workflow": "true", "id": workflow_id, "detail": "true"}).json()}
    claimed = {n: listed[n]["execution"]["claimedAt"] for n in "abcd"}
    ended = {n: listed[n]["events"]["endTime"] for n in "abcd"}
    assert claimed["b"] >= ended["a"] - 1 and claimed["c"] >= ended["a"] - 1
    assert claimed["d"] >= max(ended["b"], ended["c"]) - 1
    assert claimed["a"] < claimed["b"] and claimed["a"] < claimed["c"] < claimed["d"] and claimed["b"] < claimed["d"]
    for name in "abcd":
        assert http.get(f"/workflows/{workflow_id}/{name}/stdout").text == f"{name} {workflow_id}\n"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_2d_sweep_and_a_rerun_after_a_failure_on_the_local_cloud(local_cloud):
    http, image = local_cloud
    spec = {"name": "e2e-sweep", "jobs": [
        e2e_job(image, "g", "sh -c 'echo ${a}-${b} $PROMINENCE_PARAMETER_a; test ${a}-${b} != 2-1 || "
                            "test -e /tmp/never'"),
        e2e_job(image, "after", "echo after")],
        "dependencies": {"g": ["after"]},
        "factories": [{"type": "parameterSweep", "name": "grid", "jobs": ["g"], "parameters": [
            {"name": "a", "start": 1, "end": 2, "step": 1}, {"name": "b", "start": 0, "end": 1, "step": 1}]}]}
    response = http.post("/workflows", json=spec)
    assert response.status_code == 201, response.text
    workflow_id = response.json()["id"]
    done = wait_workflow(http, workflow_id)
    assert done["status"] == "failed", done  # instance 3 (a=2, b=1) exits 1: `after` never runs
    assert done["progress"] == {"total": 5, "done": 3, "failed": 1, "queued": 0, "waiting": 1}
    outputs = [http.get(f"/workflows/{workflow_id}/g/{i}/stdout").text for i in range(4)]
    assert outputs == ["1-0 1\n", "1-1 1\n", "2-0 2\n", "2-1 2\n"]
    listed = {j["name"]: j for j in http.get("/jobs", params={"workflow": "true", "id": workflow_id}).json()}
    assert listed["e2e-sweep/after"]["status"] == "failed"
    assert listed["e2e-sweep/g/3"]["parameters"] == {"a": 2, "b": 1}
    # Re-run: only the failed instance and what depends on it; it fails again the same way.
    response = http.put(f"/workflows/{workflow_id}")
    assert response.status_code == 200, response.text
    rerun = response.json()["id"]
    again = wait_workflow(http, rerun)
    assert again["status"] == "failed" and again["progress"]["done"] == 3 and again["progress"]["failed"] == 1
    assert sorted(j["name"] for j in http.get("/jobs", params={"workflow": "true", "id": rerun}).json()) == [
        "e2e-sweep/after", "e2e-sweep/g/3"]
    assert http.get(f"/workflows/{rerun}/g/0/stdout").text == "1-0 1\n"  # from the workflow it re-runs


# -- GraphQL ---------------------------------------------------------------------------------------

def graphql(api, query: str, user: str = "alice", **variables) -> dict:
    response = api.client.post("/graphql", json={"query": query, "variables": variables}, headers=api.headers(user))
    assert response.status_code == 200, response.text
    return response.json()


WORKFLOW_FIELDS = "id name status statusReason createTime endTime rerunOf progress { total done failed queued waiting } " \
                  "description jobs { id name status }"


def test_graphql_workflows(api):
    created = graphql(api, f"mutation($w: JSON!) {{ createWorkflow(input: $w) {{ {WORKFLOW_FIELDS} }} }}", w=DIAMOND)
    workflow_ = created["data"]["createWorkflow"]
    number = workflow_["id"]
    assert workflow_["status"] == "idle" and workflow_["progress"]["total"] == 4
    assert [j["name"] for j in workflow_["jobs"]] == ["diamond/a", "diamond/b", "diamond/c", "diamond/d"]
    assert workflow_["description"]["dependencies"] == DIAMOND["dependencies"]
    second = graphql(api, "mutation($w: JSON!) { createWorkflow(input: $w) { id } }", w=DIAMOND)["data"]
    page = graphql(api, "{ workflows(first: 1) { totalCount edges { cursor node { id } } "
                        "pageInfo { hasNextPage endCursor } } }")["data"]["workflows"]
    assert page["totalCount"] == 2 and page["pageInfo"]["hasNextPage"]
    assert [e["node"]["id"] for e in page["edges"]] == [number]
    rest = graphql(api, "query($a: String) { workflows(after: $a) { edges { node { id } } } }",
                   a=page["pageInfo"]["endCursor"])["data"]["workflows"]
    assert [e["node"]["id"] for e in rest["edges"]] == [second["createWorkflow"]["id"]]
    assert graphql(api, f'{{ workflow(id: "{number}") {{ name }} }}')["data"]["workflow"]["name"] == "diamond"
    # Another user's workflow is unknown to them; bad input is named.
    hidden = graphql(api, f'{{ workflow(id: "{number}") {{ name }} }}', user="bob")
    assert hidden["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    bad = graphql(api, "mutation($w: JSON!) { createWorkflow(input: $w) { id } }",
                  w={"jobs": [job("a")], "dependencies": {"a": ["zz"]}})
    assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT" and "zz" in bad["errors"][0]["message"]
    ids = {j["name"]: int(j["id"]) for j in workflow_["jobs"]}
    for name in ("diamond/a", "diamond/b", "diamond/c"):
        finish(api, ids[name], exit_code=1 if name == "diamond/c" else 0)
    failed = graphql(api, f'{{ workflow(id: "{number}") {{ status progress {{ done failed }} }} }}')["data"]
    assert failed["workflow"] == {"status": "failed", "progress": {"done": 2, "failed": 1}}
    rerun = graphql(api, f'mutation {{ rerunWorkflow(id: "{number}") {{ {WORKFLOW_FIELDS} }} }}')["data"]
    assert rerun["rerunWorkflow"]["rerunOf"] == number
    assert [j["name"] for j in rerun["rerunWorkflow"]["jobs"]] == ["diamond/c", "diamond/d"]
    clone = graphql(api, f'mutation {{ cloneWorkflow(id: "{number}") {{ id status }} }}')["data"]["cloneWorkflow"]
    deleted = graphql(api, f'mutation {{ deleteWorkflow(id: "{clone["id"]}") {{ status statusReason }} }}')["data"]
    assert deleted["deleteWorkflow"] == {"status": "deleted", "statusReason": "Workflow deleted by user"}
    removed = graphql(api, f'mutation {{ removeWorkflow(id: "{number}") {{ id }} }}')
    assert removed["errors"][0]["extensions"]["code"] == "INVALID_STATE"  # not kept by leaveInQueue
