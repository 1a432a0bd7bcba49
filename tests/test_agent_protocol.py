"""/agent/v1 as a node's agent sees it, on SQLite and PostgreSQL: node tokens only, exactly-once
claims, and reports from an attempt that is no longer current change nothing."""
import socket
import threading
import time

import httpx
import jwt
from sqlalchemy import create_engine, insert, select, update

from gateway.settings import Settings
from schema.identity import TokenAuthority
from schema.tables import jobs, nodes
from tests.conftest import simple_job
from tests.live import LiveServer

MAX_ID = 2**63 - 1


def insert_node(engine, state: str) -> int:
    with engine.begin() as connection:
        return connection.execute(insert(nodes).values(
            cloud="local", name=f"n-{time.monotonic_ns()}", state=state, cpus=4, memory_mb=8192, disk_gb=100,
            site="local", region="", info={}, created_at=time.time()).returning(nodes.c.id)).scalar_one()


def add_node(api, state="configuring") -> tuple[int, dict]:
    node_id = insert_node(api.client.app.state.engine, state)
    return node_id, {"Authorization": f"Bearer {api.tokens.issue_node_token(node_id)}"}


def assign(api, job_ids, node_id):
    with api.client.app.state.engine.begin() as connection:
        connection.execute(update(jobs).where(jobs.c.id.in_(job_ids)).values(node_id=node_id))


def agent(api, method, path, headers, **kwargs):
    return api.client.request(method, "/agent/v1" + path, headers=headers, **kwargs)


def test_register_heartbeat_claim_finish(api):
    node_id, headers = add_node(api)
    assert agent(api, "POST", "/register", headers, json={"runtimes": {"podman": "4"}}).json() == {"node": node_id}
    job_id = api.submit(simple_job(outputFiles=["out.txt"], policies={"leaveInQueue": True}))
    assign(api, [job_id], node_id)
    [claimed] = agent(api, "POST", "/claim?wait=0", headers).json()["jobs"]
    assert (claimed["id"], claimed["attempt"]) == (job_id, 1)
    assert claimed["token"] and claimed["url"].endswith("/v1")
    assert agent(api, "POST", "/claim?wait=0", headers).json() == {"jobs": []}
    [running] = api.request("GET", f"/jobs/{job_id}").json()
    assert running["status"] == "running" and "startTime" in running["events"]
    assert agent(api, "POST", "/heartbeat", headers, json={"running": [[job_id, 1]]}).json() == {"stop": []}

    params = {"attempt": 1}
    assert agent(api, "POST", f"/jobs/{job_id}/stdout", headers, params={**params, "offset": 0},
                 content=b"hello ").json() == {"accepted": True}
    agent(api, "POST", f"/jobs/{job_id}/stdout", headers, params={**params, "offset": 6}, content=b"world\n")
    agent(api, "POST", f"/jobs/{job_id}/stdout", headers, params={**params, "offset": 6}, content=b"world\n")
    assert api.request("GET", f"/jobs/{job_id}/stdout").text == "hello world\n"
    undeclared = agent(api, "PUT", f"/jobs/{job_id}/outputs", headers, params={**params, "name": "../x"}, content=b"x")
    assert undeclared.status_code == 400 and "not one of the job's outputFiles" in undeclared.json()["error"]
    agent(api, "PUT", f"/jobs/{job_id}/outputs", headers, params={**params, "name": "out.txt"}, content=b"result")

    report = {"status": "completed", "execution": {"tasks": [{"exitCode": 0}]}}
    assert agent(api, "POST", f"/jobs/{job_id}/finish", headers, params=params, json=report).json() == {"accepted": True}
    [done] = api.request("GET", f"/jobs/{job_id}").json()
    assert done["status"] == "completed"
    assert done["execution"]["tasks"] == [{"exitCode": 0}]
    assert done["execution"]["provisionedResources"] == {"cpus": 4, "memory": 8, "disk": 100, "nodes": 1}
    assert done["outputFiles"][0]["size"] == 6
    assert api.client.get(done["outputFiles"][0]["url"]).content == b"result"
    # The attempt is over: a second report changes nothing.
    again = agent(api, "POST", f"/jobs/{job_id}/finish", headers, params=params, json={"status": "failed"})
    assert again.json() == {"accepted": False}
    assert api.request("GET", f"/jobs/{job_id}").json()[0]["status"] == "completed"


def test_deleted_job_is_stopped_and_its_late_reports_ignored(api):
    node_id, headers = add_node(api, state="ready")
    job_id = api.submit()
    assign(api, [job_id], node_id)
    agent(api, "POST", "/claim?wait=0", headers)
    api.request("DELETE", f"/jobs/{job_id}")
    assert agent(api, "POST", "/heartbeat", headers, json={"running": [[job_id, 1]]}).json() == {"stop": [[job_id, 1]]}
    late = agent(api, "POST", f"/jobs/{job_id}/stdout", headers, params={"attempt": 1, "offset": 0}, content=b"x")
    assert late.json() == {"accepted": False}
    agent(api, "POST", f"/jobs/{job_id}/finish", headers, params={"attempt": 1}, json={"status": "completed"})
    assert api.request("GET", f"/jobs/{job_id}").json()[0]["status"] == "deleted"


def test_infrastructure_failures_are_retried_then_fail(api):
    node_id, headers = add_node(api, state="ready")
    job_id = api.submit(simple_job(policies={"maximumRetries": 1}))
    report = {"status": "failed", "reason": "Container image pull failed", "infrastructure": True}
    for attempt in (1, 2):
        assign(api, [job_id], node_id)
        [claimed] = agent(api, "POST", "/claim?wait=0", headers).json()["jobs"]
        assert claimed["attempt"] == attempt
        agent(api, "POST", f"/jobs/{job_id}/finish", headers, params={"attempt": attempt}, json=report)
        [job] = api.request("GET", f"/jobs/{job_id}").json()
        if attempt == 1:
            assert job["status"] == "idle" and "Container image pull failed" in job["statusReason"]
    assert (job["status"], job["statusReason"]) == ("failed", "Container image pull failed")
    assert job["execution"]["retries"] == 1


def test_jobs_of_a_restarted_agent_are_requeued(api):
    node_id, headers = add_node(api, state="ready")
    job_id = api.submit()
    assign(api, [job_id], node_id)
    agent(api, "POST", "/claim?wait=0", headers)
    agent(api, "POST", "/register", headers, json={})
    [job] = api.request("GET", f"/jobs/{job_id}").json()
    assert job["status"] == "idle" and "agent restarted" in job["statusReason"]
    assert agent(api, "POST", f"/jobs/{job_id}/finish", headers, params={"attempt": 1},
                 json={"status": "completed"}).json() == {"accepted": False}


def test_a_draining_node_stays_draining_when_its_agent_restarts(api):
    """An admin drained it: a new agent must not make it take new jobs again."""
    node_id, headers = add_node(api, state="draining")
    assert agent(api, "POST", "/register", headers, json={}).status_code == 200
    with api.client.app.state.engine.connect() as connection:
        assert connection.execute(select(nodes.c.state).where(nodes.c.id == node_id)).scalar_one() == "draining"


def test_claims_are_exactly_once_under_concurrency(api):
    node_id, headers = add_node(api, state="ready")
    ids = [api.submit() for _ in range(60)]
    assign(api, ids, node_id)
    claimed, lock = [], threading.Lock()

    def claim():
        for _ in range(5):
            got = agent(api, "POST", "/claim?wait=0", headers).json()["jobs"]
            with lock:
                claimed.extend(job["id"] for job in got)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == ids


def test_only_node_tokens_speak_the_agent_protocol(api):
    node_id, headers = add_node(api)
    assert agent(api, "POST", "/claim?wait=0", api.headers("alice")).status_code == 403
    assert agent(api, "POST", "/claim?wait=0", {}).status_code == 401
    assert api.request("GET", "/jobs", user=None, headers=headers).status_code == 401
    other, other_headers = add_node(api, state="ready")
    job_id = api.submit()
    assign(api, [job_id], node_id)
    assert agent(api, "POST", "/claim?wait=0", other_headers).json() == {"jobs": []}
    bad = agent(api, "POST", "/heartbeat", headers, json={"running": "all"})
    assert bad.status_code == 400 and "running must be a list" in bad.json()["error"]
    assert agent(api, "POST", f"/jobs/{job_id}/finish", headers, params={"attempt": 1}, json={}).status_code == 400
    with api.client.app.state.engine.begin() as connection:
        connection.execute(update(nodes).where(nodes.c.id == node_id).values(state="deleted"))
    assert agent(api, "POST", "/heartbeat", headers, json={"running": []}).status_code == 403


def test_an_agent_that_hangs_up_while_waiting_claims_nothing(tmp_path):
    """A long-poll claim whose agent died (its connection closed) must not take the jobs assigned
    meanwhile: they would count as running on a dead node until it is declared lost."""
    database = f"sqlite:///{tmp_path / 'state.db'}"
    with LiveServer(tmp_path / "data", database) as server:
        engine = create_engine(database)
        node_id = insert_node(engine, "ready")
        node_token = TokenAuthority(Settings.load(str(server.data_dir), database).secret).issue_node_token(node_id)
        job_id = httpx.post(f"{server.url}/v1/jobs", json=simple_job(),
                            headers={"Authorization": f"Bearer {server.token()}"}).json()["id"]

        hung_up = socket.create_connection(("127.0.0.1", server.port))
        hung_up.sendall(f"POST /agent/v1/claim?wait=10 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                        f"Authorization: Bearer {node_token}\r\n\r\n".encode())
        time.sleep(0.5)
        hung_up.close()
        with engine.begin() as connection:
            connection.execute(update(jobs).where(jobs.c.id == job_id).values(node_id=node_id))
        time.sleep(2.5)  # the waiting claim looks again at least every second
        with engine.connect() as connection:
            assert connection.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar_one() == "idle"
        claimed = httpx.post(f"{server.url}/agent/v1/claim?wait=0", headers={"Authorization": f"Bearer {node_token}"})
        assert [job["id"] for job in claimed.json()["jobs"]] == [job_id]


def claim_one(api, spec=None) -> tuple[dict, dict, int]:
    """A job submitted by alice and claimed by a ready node: (the claimed job, the node's headers, node id)."""
    node_id, headers = add_node(api, state="ready")
    job_id = api.submit(spec or simple_job())
    assign(api, [job_id], node_id)
    [claimed] = agent(api, "POST", "/claim?wait=0", headers).json()["jobs"]
    return claimed, headers, node_id


def test_outputs_with_one_name_in_different_directories_keep_their_own_content(api):
    spec = simple_job(outputFiles=["a/out.txt", "b/out.txt", "out.txt"], outputDirs=["a", "out.txt.d"])
    claimed, headers, _ = claim_one(api, spec)
    job_id, params = claimed["id"], {"attempt": claimed["attempt"]}
    contents = {"a/out.txt": b"from a", "b/out.txt": b"from b", "out.txt": b"top", "a": b"dir a tgz",
                "out.txt.d": b"dir tgz"}
    for name, content in contents.items():
        response = agent(api, "PUT", f"/jobs/{job_id}/outputs", headers, params={**params, "name": name}, content=content)
        assert response.json() == {"accepted": True}
    [job] = api.request("GET", f"/jobs/{job_id}").json()
    outputs = {item["name"]: item for item in job["outputFiles"] + job["outputDirs"]}
    assert len({item["url"] for item in outputs.values()}) == 5
    for name, content in contents.items():
        assert api.client.get(outputs[name]["url"]).content == content
        assert outputs[name]["size"] == len(content)
    assert "/files/a/out.txt?" in outputs["a/out.txt"]["url"] and "/dirs/a.tgz?" in outputs["a"]["url"]


def test_heartbeats_with_bad_pairs_are_400(api):
    node_id, headers = add_node(api, state="ready")
    for running in ([[2**63, 1]], [[1, 2**64]], [[0, 1]], [[-1, 1]], [[1.5, 1]], [["1", 1]], [[True, 1]],
                    [[1, 1, 1]], [[1]], [1, 2], {"1": 1}, "all", None, [[1, None]], [[[1], 1]]):
        response = agent(api, "POST", "/heartbeat", headers, json={"running": running})
        assert response.status_code == 400, running
        assert "running must be a list of at most" in response.json()["error"]
    assert agent(api, "POST", "/heartbeat", headers, json={"running": [[MAX_ID, MAX_ID]]}).json() == {
        "stop": [[MAX_ID, MAX_ID]]}


def test_agent_bodies_that_are_not_plain_json_or_have_bad_fields_are_400(api):
    claimed, headers, _ = claim_one(api)
    job_id, params = claimed["id"], {"attempt": claimed["attempt"]}
    json_body = {"Content-Type": "application/json", **headers}
    for body in (b'{"running": [[1, NaN]]}', b'{"x": Infinity}', b"[" * 100_000 + b"]" * 100_000):
        response = agent(api, "POST", "/heartbeat", json_body, content=body)
        assert response.status_code == 400 and response.json() == {"error": "The body is not valid JSON"}
    for path, body in (("/register", {"runtimes": {"podman\u0000": "4"}}),
                       (f"/jobs/{job_id}/finish?attempt=1", {"status": "completed", "reason": "x\u0000"}),
                       (f"/jobs/{job_id}/finish?attempt=1", {"status": "completed", "execution": {"tasks": ["\u0000"]}})):
        response = agent(api, "POST", path, headers, json=body)
        assert response.status_code == 400 and response.json() == {"error": "The body must not contain NUL characters"}
    for report, message in (({"status": "completed", "execution": "x"}, "execution must be a JSON object"),
                            ({"status": "completed", "reason": {"a": 1}}, "reason must be a string"),
                            ({"status": 3}, "status is required, a string"),
                            ({"status": "failed", "infrastructure": "yes"}, "infrastructure must be true or false")):
        response = agent(api, "POST", f"/jobs/{job_id}/finish", headers, params=params, json=report)
        assert response.status_code == 400 and message in response.json()["error"]
    assert api.request("GET", f"/jobs/{job_id}").json()[0]["status"] == "running"
    for attempt in (0, 2**63, "x"):
        response = agent(api, "POST", f"/jobs/{job_id}/finish", headers, params={"attempt": attempt},
                         json={"status": "completed"})
        assert response.status_code == 400


def test_output_offsets_past_what_was_received_are_400(api):
    claimed, headers, _ = claim_one(api)
    job_id, params = claimed["id"], {"attempt": claimed["attempt"]}
    for offset in (1, 2**40, MAX_ID):
        response = agent(api, "POST", f"/jobs/{job_id}/stdout", headers, params={**params, "offset": offset},
                         content=b"x")
        assert response.status_code == 400 and "past the end of the stdout received so far (0 bytes)" in response.text
    agent(api, "POST", f"/jobs/{job_id}/stdout", headers, params={**params, "offset": 0}, content=b"abc")
    assert agent(api, "POST", f"/jobs/{job_id}/stdout", headers, params={**params, "offset": 4},
                 content=b"x").status_code == 400
    agent(api, "POST", f"/jobs/{job_id}/stdout", headers, params={**params, "offset": 3}, content=b"def")
    assert api.request("GET", f"/jobs/{job_id}/stdout").content == b"abcdef"


def job_headers(claimed: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {claimed['token']}"}


def test_a_job_token_acts_as_its_user_only_while_its_attempt_runs(api):
    claimed, headers, node_id = claim_one(api, simple_job(resources={"cpus": 1, "memory": 1, "walltime": 60}))
    job_id, token = claimed["id"], job_headers(claimed)
    claims = jwt.decode(claimed["token"], options={"verify_signature": False})
    assert claims["job"] == job_id and claims["attempt"] == 1 and "admin" not in claims
    assert abs(claims["exp"] - (time.time() + 60 * 60 + 3600)) < 60  # walltime plus a margin, not 30 days
    listed = api.request("GET", "/jobs", user=None, headers=token)
    assert listed.status_code == 200 and [job["id"] for job in listed.json()] == [job_id]
    created = api.request("POST", "/jobs", user=None, headers=token, json=simple_job())
    assert created.status_code == 201  # as its user
    # Its stage-out happens while the job is still running: the token works until the report.
    agent(api, "POST", f"/jobs/{job_id}/finish", headers, params={"attempt": 1}, json={"status": "completed"})
    for method, path in (("GET", "/jobs"), ("GET", f"/jobs/{job_id}"), ("POST", "/jobs")):
        response = api.request(method, path, user=None, headers=token, json=simple_job())
        assert response.status_code == 401 and response.json() == {"error": "Authentication failure"}


def test_a_job_token_dies_when_its_job_is_deleted_or_requeued(api):
    deleted, _, _ = claim_one(api)
    api.request("DELETE", f"/jobs/{deleted['id']}")
    assert api.request("GET", "/jobs", user=None, headers=job_headers(deleted)).status_code == 401

    first, headers, node_id = claim_one(api)
    agent(api, "POST", "/register", headers, json={})  # the agent restarted: the job waits again
    assert api.request("GET", "/jobs", user=None, headers=job_headers(first)).status_code == 401
    assign(api, [first["id"]], node_id)
    [second] = agent(api, "POST", "/claim?wait=0", headers).json()["jobs"]
    assert second["attempt"] == 2
    assert api.request("GET", "/jobs", user=None, headers=job_headers(second)).status_code == 200
    assert api.request("GET", "/jobs", user=None, headers=job_headers(first)).status_code == 401


def test_job_tokens_are_never_admin_nor_another_users(api):
    claimed, _, _ = claim_one(api)
    forged = api.tokens.issue("alice", admin=True, job=claimed["id"], attempt=claimed["attempt"])
    assert api.tokens.verify(f"Bearer {forged}").admin is False
    as_bob = api.tokens.issue("bob", job=claimed["id"], attempt=claimed["attempt"])  # the job is alice's
    assert api.request("GET", "/jobs", user=None, headers={"Authorization": f"Bearer {as_bob}"}).status_code == 401
    old_style = api.tokens.issue("alice", job=claimed["id"])  # no attempt: as issued before, for 30 days
    assert api.request("GET", "/jobs", user=None, headers={"Authorization": f"Bearer {old_style}"}).status_code == 401


def test_image_pull_token_is_hidden_in_views_but_given_to_the_agent_and_cloned(api):
    credential = {"username": "robot", "token": "pull-s3cret"}
    spec = simple_job(tasks=[{"image": "registry.example.org/private/image:1", "imagePullCredential": credential}])
    claimed, headers, node_id = claim_one(api, spec)
    assert claimed["spec"]["tasks"][0]["imagePullCredential"] == credential
    hidden = {"username": "robot", "token": "***"}
    for path in (f"/jobs/{claimed['id']}", "/jobs", "/jobs?detail=true", "/jobs?all=true", f"/jobs?id={claimed['id']}"):
        response = api.request("GET", path)
        assert "pull-s3cret" not in response.text
        assert response.json()[0]["tasks"][0]["imagePullCredential"] == hidden
    clone = api.request("PUT", f"/jobs/{claimed['id']}/clone").json()["id"]
    assign(api, [clone], node_id)
    [cloned] = agent(api, "POST", "/claim?wait=0", headers).json()["jobs"]
    assert cloned["spec"]["tasks"][0]["imagePullCredential"] == credential
