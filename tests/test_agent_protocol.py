"""/agent/v1 as a node's agent sees it, on SQLite and PostgreSQL: node tokens only, exactly-once
claims, and reports from an attempt that is no longer current change nothing."""
import socket
import threading
import time

import httpx
from sqlalchemy import create_engine, insert, select, update

from gateway.settings import Settings
from schema.identity import TokenAuthority
from schema.tables import jobs, nodes
from tests.conftest import simple_job
from tests.live import LiveServer


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
