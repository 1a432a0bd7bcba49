"""GraphQL's jobs in full through a real client (gql over HTTP) against a running server: a job's
description, execution record, outputs and node; the job mutations and their errors; the
viewer's job counts. And what a page of jobs with nested fields costs in SQL statements."""
import base64
import json
import time

import anyio
import httpx
import pytest
from gql.transport.exceptions import TransportQueryError
from sqlalchemy import create_engine, event, update

from gateway.settings import Settings
from schema.identity import Identity, TokenAuthority
from schema.jobspec import MAX_BODY_BYTES, JobSpec
from schema.tables import jobs
from tests.conftest import simple_job
from tests.live import LiveServer
from tests.test_agent_protocol import insert_node
from tests.test_clouds_admin import cloud_doc
from tests.test_graphql import client, error_code, request, submit


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphql-jobs")
    with LiveServer(root / "data", f"sqlite:///{root / 'state.db'}") as live:  # no provisioner: jobs wait
        yield live


def rest(server: LiveServer, token: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{server.url}/v1{path}", headers={"Authorization": f"Bearer {token}"}, **kwargs)


def execute(server: LiveServer, token: str, query: str, **variables) -> dict:
    return client(server, token).execute(request(query, **variables))


def error_of(server: LiveServer, token: str, query: str, **variables) -> dict:
    with pytest.raises(TransportQueryError) as raised:
        execute(server, token, query, **variables)
    [error] = raised.value.errors
    return error


DESCRIPTION = """
    id name status labels { key value }
    tasks { image runtime type cmd args env { key value } app workdir procsPerNode
            imagePullCredential { username token } imageSha256 stdout }
    resources { nodes cpus cpusRange cpusOptions totalCpusRange memory memoryPerCpu disk walltime }
    policies { maximumRetries maximumTaskRetries preemptible maximumTimeInQueue maximumIdleTimePerResource
               leaveInQueue priority autoScalingType ignoreTaskFailures reportJobSuccessOnTaskFailure
               runSerialTasksOnAllNodes placement { requirements { sites regions } preferences { sites regions } } }
    notifications { event type } inputs { filename content executable } artifacts { url mountpoint executable }
    storage { type mountpoint default directory options }
    events { createTime startTime endTime } outputs { name kind size url }"""
CREATE = "mutation ($input: JSON!) { createJob(input: $input) { " + DESCRIPTION + " } }"


def job_query(fields: str) -> str:
    return "query ($id: ID!) { job(id: $id) { " + fields + " } }"


def full_spec() -> dict:
    content = base64.b64encode(b"#!/bin/sh\necho hi\n").decode()
    spec = simple_job(
        name="full", labels={"project": "x1", "kind": "test"},
        resources={"nodes": 1, "cpusRange": [1, 4], "memoryPerCpu": 0.5, "disk": 5, "walltime": 60},
        policies={"maximumRetries": 2, "maximumTaskRetries": 1, "priority": 5, "leaveInQueue": True,
                  "maximumTimeInQueue": -1, "autoScalingType": "dedicated", "ignoreTaskTailures": True,
                  "placement": {"requirements": {"sites": ["local"]}, "preferences": {"regions": ["eu"]}}},
        notifications=[{"event": "jobFinished", "type": "email"}],
        inputs=[{"filename": "run.sh", "content": content, "executable": True}],
        artifacts=[{"url": "https://example.org/data.tgz", "mountpoint": "data:/data"}],
        outputFiles=["out.txt"], outputDirs=["results"],
        storage={"type": "onedata", "mountpoint": "/mnt/od",
                 "onedata": {"provider": "p.example.org", "token": "s3cret"}})
    spec["tasks"] = [
        {"image": "busybox", "runtime": "podman", "cmd": "./run.sh", "args": "-v 'two words'",
         "env": {"B": "2", "A": 1}, "workDir": "/home/user", "imagePullCredential": {"username": "me", "token": "hunter2"}, "stdout": "log.txt"},
        {"image": "busybox", "type": "sidecar", "args": ["x", "y z"]},
    ]
    return spec


def test_create_job_shows_the_description_typed_and_its_secrets_hidden(server):
    token = server.token("alice")
    job = execute(server, token, CREATE, input=full_spec())["createJob"]
    assert job["name"] == "full" and job["status"] == "IDLE"
    assert job["labels"] == [{"key": "kind", "value": "test"}, {"key": "project", "value": "x1"}]
    first, sidecar = job["tasks"]
    assert first == {"image": "busybox", "runtime": "PODMAN", "type": None, "cmd": "./run.sh",
                     "args": ["-v", "two words"], "env": [{"key": "A", "value": "1"}, {"key": "B", "value": "2"}],
                     "app": None, "workdir": "/home/user", "procsPerNode": None,
                     "imagePullCredential": {"username": "me", "token": "***"}, "imageSha256": None,
                     "stdout": "log.txt"}
    assert sidecar["type"] == "SIDECAR" and sidecar["runtime"] == "SINGULARITY" and sidecar["args"] == ["x", "y z"]
    assert sidecar["env"] == [] and sidecar["imagePullCredential"] is None
    assert job["resources"] == {"nodes": 1, "cpus": None, "cpusRange": [1, 4], "cpusOptions": None,
                                "totalCpusRange": None, "memory": None, "memoryPerCpu": 0.5, "disk": 5, "walltime": 60}
    assert job["policies"] == {
        "maximumRetries": 2, "maximumTaskRetries": 1, "preemptible": None, "maximumTimeInQueue": -1,
        "maximumIdleTimePerResource": None, "leaveInQueue": True, "priority": 5, "autoScalingType": "DEDICATED",
        "ignoreTaskFailures": True, "reportJobSuccessOnTaskFailure": None, "runSerialTasksOnAllNodes": None,
        "placement": {"requirements": {"sites": ["local"], "regions": None},
                      "preferences": {"sites": None, "regions": ["eu"]}}}
    assert job["notifications"] == [{"event": "JOB_FINISHED", "type": "EMAIL"}]
    assert job["inputs"] == full_spec()["inputs"]
    assert job["artifacts"] == [{"url": "https://example.org/data.tgz", "mountpoint": "data:/data", "executable": None}]
    assert job["storage"] == {"type": "ONEDATA", "mountpoint": "/mnt/od", "default": None, "directory": None,
                              "options": {"provider": "p.example.org", "token": "***"}}
    assert job["events"]["createTime"].endswith("+00:00") and job["events"]["startTime"] is None
    assert job["outputs"] == [{"name": "out.txt", "kind": "FILE", "size": None, "url": None},
                              {"name": "results", "kind": "DIRECTORY", "size": None, "url": None}]
    # The same job as /v1 shows it: one description, hidden the same way.
    [described] = rest(server, token, "GET", f"/jobs/{job['id']}").json()
    assert described["tasks"][0]["imagePullCredential"]["token"] == "***"
    assert described["storage"]["onedata"]["token"] == "***"
    as_graphql = execute(server, token, job_query(DESCRIPTION), id=job["id"])["job"]
    assert as_graphql == job
    assert "hunter2" not in json.dumps(as_graphql) and "s3cret" not in json.dumps(as_graphql)


def test_create_job_refuses_what_v1_refuses_naming_the_field(server):
    token = server.token("alice")
    create = "mutation ($input: JSON!) { createJob(input: $input) { id } }"
    bad_task = simple_job(tasks=[{"image": "busybox", "nope": 1}])
    cases = [(bad_task, '"tasks[0].nope" is not an allowed field'),
             (simple_job(resources={"cpus": 1}), "resources: exactly one of memory and memoryPerCpu is required"),
             (simple_job(labels={"a b": "c"}), "labels"), ([1, 2], "must be a JSON object"), ("{}", "JSON object"),
             (simple_job(inputs=[{"filename": "big", "content": "A" * MAX_BODY_BYTES}]), "larger than the limit")]
    for number, (spec, words) in enumerate(cases):
        error = error_of(server, token, create, input=spec)
        assert error["extensions"]["code"] == "BAD_USER_INPUT" and words in error["message"], error
        if number < 4:  # /v1 says the same of the same JSON
            v1 = rest(server, token, "POST", "/jobs", json=spec)
            assert v1.status_code == 400 and v1.json()["error"] == error["message"]
    assert error_code(server, None, create, input=simple_job()) == "UNAUTHENTICATED"
    assert "Traceback" not in server.log.read_text()


def node_token(server: LiveServer, node_id: int) -> dict[str, str]:
    secret = Settings.load(data_dir=str(server.data_dir)).secret
    return {"Authorization": f"Bearer {TokenAuthority(secret).issue_node_token(node_id)}"}


RAN = """query ($id: ID!) { job(id: $id) {
    status startedAt endedAt events { startTime endTime } outputs { name kind size url }
    execution { site retries maxMemoryUsageKB claimedAt stageInTime stageInError imagePullError stageOutTime cpu
                runtimeVersions { runtime version } provisionedResources { cpus memory disk nodes }
                tasks { exitCode wallTimeUsage cpuTimeUsage maxResidentSetSizeKB retries runtime imagePullStatus
                        imagePullTime imageSha256 startedAt error } }
    node { id name cloudName state cpus memoryMb diskGb } } }"""


def test_a_job_that_ran_shows_its_execution_outputs_and_node(server):
    """A job run through the agent protocol, as a node's agent runs it."""
    token = server.token("erin")
    job_id = rest(server, token, "POST", "/jobs", json=simple_job(outputFiles=["out.txt"],
                                                                  outputDirs=["results"])).json()["id"]
    engine = create_engine(server.database_url)
    node_id = insert_node(engine, "ready")
    with engine.begin() as connection:
        connection.execute(update(jobs).where(jobs.c.id == job_id).values(node_id=node_id))
    engine.dispose()
    agent, headers = f"{server.url}/agent/v1", node_token(server, node_id)
    assert httpx.post(f"{agent}/register", json={}, headers=headers).status_code == 200
    [claimed] = httpx.post(f"{agent}/claim?wait=0", headers=headers).json()["jobs"]
    assert claimed["id"] == job_id
    stored = httpx.put(f"{agent}/jobs/{job_id}/outputs", params={"attempt": 1, "name": "out.txt"}, content=b"result",
                       headers=headers)
    assert stored.json() == {"accepted": True}
    started = time.time()
    execution = {"cpu": {"model name": "Test CPU"}, "claimedAt": started, "stageInTime": 0.25, "stageOutTime": 0.5,
                 "runtimeVersion": {"podman": "4.9.3"}, "maxMemoryUsageKB": 2048,
                 "tasks": [{"imagePullStatus": "pulled", "imagePullTime": 1, "imageSha256": "ab" * 32,
                            "runtime": "podman", "retries": 1, "containerStartedAt": started, "exitCode": 0,
                            "wallTimeUsage": 1.5, "cpuTimeUsage": 0.75, "maxResidentSetSizeKB": 2048},
                           {"exitCode": "not a number", "error": "sidecar gone"}]}
    finished = httpx.post(f"{agent}/jobs/{job_id}/finish", params={"attempt": 1}, headers=headers,
                          json={"status": "completed", "execution": execution})
    assert finished.json() == {"accepted": True}

    job = execute(server, token, RAN, id=str(job_id))["job"]
    assert job["status"] == "COMPLETED" and job["startedAt"] and job["endedAt"]
    assert (job["events"]["startTime"], job["events"]["endTime"]) == (job["startedAt"], job["endedAt"])
    ran = job["execution"]
    assert ran["site"] == "local" and ran["retries"] == 0 and ran["maxMemoryUsageKB"] == 2048
    assert ran["stageInTime"] == 0.25 and ran["stageOutTime"] == 0.5 and ran["stageInError"] is None
    assert ran["cpu"] == {"model name": "Test CPU"} and ran["claimedAt"].endswith("+00:00")
    assert ran["runtimeVersions"] == [{"runtime": "podman", "version": "4.9.3"}]
    assert ran["provisionedResources"] == {"cpus": 4, "memory": 8, "disk": 100, "nodes": 1}
    first, odd = ran["tasks"]
    assert first["exitCode"] == 0 and first["wallTimeUsage"] == 1.5 and first["cpuTimeUsage"] == 0.75
    assert first["maxResidentSetSizeKB"] == 2048 and first["retries"] == 1 and first["runtime"] == "podman"
    assert first["imagePullStatus"] == "pulled" and first["imagePullTime"] == 1.0 and first["startedAt"]
    assert odd["exitCode"] is None and odd["error"] == "sidecar gone"  # an odd value is null, not an error
    assert job["node"] == {"id": str(node_id), "name": job["node"]["name"], "cloudName": "local", "state": "READY",
                           "cpus": 4, "memoryMb": 8192, "diskGb": 100}

    out, results = job["outputs"]
    assert results == {"name": "results", "kind": "DIRECTORY", "size": None, "url": None}
    assert out["name"] == "out.txt" and out["kind"] == "FILE" and out["size"] == 6
    assert httpx.get(out["url"]).content == b"result"  # signed as /v1 signs it: no token needed
    [described] = rest(server, token, "GET", f"/jobs/{job_id}").json()
    assert described["outputFiles"][0]["url"].split("?")[0] == out["url"].split("?")[0]
    assert described["outputDirs"] == [{"name": "results", "url": ""}]


def test_mutations_clone_delete_and_remove(server):
    alice, bob = server.token("frank"), server.token("grace")
    mutation = """mutation ($id: ID!) { cloneJob(id: $id) { id status name tasks { image } } }"""
    original = execute(server, alice, CREATE, input=simple_job(name="orig", policies={"leaveInQueue": True}))
    original_id = original["createJob"]["id"]
    clone = execute(server, alice, mutation, id=original_id)["cloneJob"]
    assert clone["id"] != original_id and clone["status"] == "IDLE" and clone["name"] == "orig"

    delete = "mutation ($ids: [ID!]!) { deleteJobs(ids: $ids) { id status statusReason endedAt } }"
    deleted = execute(server, alice, delete, ids=[clone["id"], original_id, clone["id"]])["deleteJobs"]
    assert [job["id"] for job in deleted] == [clone["id"], original_id]
    assert all(job["status"] == "DELETED" and job["statusReason"] == "Job deleted by user" and job["endedAt"]
               for job in deleted)
    other = submit(server, alice)
    single = execute(server, alice, "mutation ($id: ID!) { deleteJob(id: $id) { id status } }", id=str(other))
    assert single["deleteJob"] == {"id": str(other), "status": "DELETED"}

    remove = "mutation ($id: ID!) { removeJob(id: $id) { id status } }"
    assert execute(server, alice, remove, id=original_id)["removeJob"] == {"id": original_id, "status": "DELETED"}
    listed = [job["id"] for job in rest(server, alice, "GET", "/jobs").json()]
    assert int(original_id) not in listed

    waiting = str(submit(server, alice))
    unknown = str(10**12)
    for token, query, variables, code in (
        (alice, delete, {"ids": [original_id]}, "INVALID_STATE"),  # finished already
        (alice, delete, {"ids": [waiting, original_id]}, "INVALID_STATE"),  # all or none
        (alice, remove, {"id": waiting}, "INVALID_STATE"),  # not finished
        (alice, remove, {"id": original_id}, "INVALID_STATE"),  # removed already
        (bob, delete, {"ids": [waiting]}, "NOT_FOUND"),  # another user's
        (bob, mutation, {"id": waiting}, "NOT_FOUND"),
        (bob, remove, {"id": waiting}, "NOT_FOUND"),
        (alice, delete, {"ids": [unknown]}, "NOT_FOUND"),
        (alice, mutation, {"id": unknown}, "NOT_FOUND"),
        (alice, remove, {"id": unknown}, "NOT_FOUND"),
        (alice, delete, {"ids": []}, "BAD_USER_INPUT"),
        (alice, delete, {"ids": [str(n) for n in range(1, 502)]}, "BAD_USER_INPUT"),
        (alice, delete, {"ids": ["x"]}, "BAD_USER_INPUT"),
        (alice, mutation, {"id": "-1"}, "BAD_USER_INPUT"),
        (None, remove, {"id": waiting}, "UNAUTHENTICATED"),
    ):
        assert error_code(server, token, query, **variables) == code, (query, variables)
    assert "Not authorized" not in error_of(server, bob, mutation, id=waiting)["message"]  # not told apart
    assert execute(server, alice, job_query("status"), id=waiting)["job"]["status"] == "IDLE"  # the refusals changed nothing


def test_the_viewer_counts_its_jobs_by_status(server):
    token = server.token("henry")
    query = "{ viewer { jobCounts { idle running completed failed deleted killed total } } }"
    assert execute(server, token, query)["viewer"]["jobCounts"] == {
        "idle": 0, "running": 0, "completed": 0, "failed": 0, "deleted": 0, "killed": 0, "total": 0}
    ids = [submit(server, token) for _ in range(3)]
    submit(server, server.token("someone-else"))
    rest(server, token, "DELETE", f"/jobs/{ids[0]}")
    assert execute(server, token, query)["viewer"]["jobCounts"] == {
        "idle": 2, "running": 0, "completed": 0, "failed": 0, "deleted": 1, "killed": 0, "total": 3}


# -- what a page costs ---------------------------------------------------------------------------

PAGE = """query ($first: Int) { jobs(first: $first) { totalCount edges { node {
    id status tasks { image env { key value } imagePullCredential { token } } resources { cpus memory }
    labels { key value } events { createTime } execution { site tasks { exitCode } }
    outputs { name size url } node { id name state cpus cloud { name site region } } } } } }"""


def test_a_page_of_jobs_costs_the_same_few_statements_whatever_its_size(api):
    """On SQLite and PostgreSQL: the page and its count, one batched statement for all the page's
    nodes and two for their clouds (DataLoaders); tasks, outputs and execution come with the
    page's rows."""
    app = api.client.app
    owner = Identity("alice")
    spec = JobSpec.model_validate(simple_job(outputFiles=["out.txt"], labels={"n": "1"}))

    async def submit_one(ids: list[int]) -> None:
        ids.append(await app.state.jobs.submit(owner, spec))

    async def submit_all() -> list[int]:  # at once: the inserter commits them in a few transactions
        ids: list[int] = []
        async with anyio.create_task_group() as group:
            for _ in range(500):
                group.start_soon(submit_one, ids)
        return sorted(ids)

    ids = api.client.portal.call(submit_all)
    engine = app.state.engine
    app.state.clouds.add(cloud_doc("local", site="local", region="local"))  # the nodes' cloud
    nodes = [insert_node(engine, "ready") for _ in range(3)]
    with engine.begin() as connection:  # every 7th job on a node, some with a stored output
        for n, job_id in enumerate(ids[::7]):
            connection.execute(update(jobs).where(jobs.c.id == job_id).values(
                node_id=nodes[n % 3], execution={"site": "local", "tasks": [{"exitCode": 0}],
                                                 "outputs": {"out.txt": {"key": f"scratch/{job_id}/out.txt",
                                                                         "size": 3}}}))

    statements: list[str] = []

    def count(connection, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        costs = {}
        for size in (5, 500):
            statements.clear()
            response = api.client.post("/graphql", json={"query": PAGE, "variables": {"first": size}},
                                       headers=api.headers("alice"))
            page = response.json()["data"]["jobs"]
            assert len(page["edges"]) == size and page["totalCount"] == 500, response.text
            on_nodes = [edge["node"] for edge in page["edges"] if edge["node"]["node"]]
            assert len(on_nodes) == len(ids[:size:7]) and on_nodes[0]["outputs"][0]["url"].startswith("http")
            assert on_nodes[0]["node"]["cloud"] == {"name": "local", "site": "local", "region": "local"}
            costs[size] = len(statements)
            queries = [statement for statement in statements if not statement.startswith("BEGIN")]
            # the count, the page, the page's nodes, their clouds and the clouds' usage
            assert len(queries) == 5, queries
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # SQLite's transactions begin with a statement of their own (PostgreSQL's do not).
    assert costs[5] == costs[500] <= 8, costs
