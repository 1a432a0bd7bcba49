"""kill -9 of the server while clients submit: no acknowledged job is lost (DESIGN.md 3.1, batcher)."""
import threading
import time

import httpx
import pytest

from tests.live import LiveServer

CLIENTS = 4
SUBMIT_FOR = 1.5  # seconds of submitting before the kill


def job_spec(client: int, seq: int) -> dict:
    """A job that tells which client sent it, and when, in its name, labels and task env."""
    return {
        "name": f"crash-c{client}-{seq}",
        "labels": {"client": str(client), "seq": str(seq)},
        "resources": {"nodes": 1, "cpus": 1 + seq % 4, "memory": 1 + client, "disk": 10},
        "tasks": [{"image": "busybox", "runtime": "singularity", "cmd": "sh",
                   "args": ["-c", f"echo {client} {seq}"],
                   "env": {"CLIENT": str(client), "SEQ": str(seq), "PAYLOAD": "x" * (seq % 50)}}],
    }


def submitter(url: str, token: str, client: int, stop: threading.Event,
              acknowledged: list[tuple[int, dict]], errors: list[str]) -> None:
    """Submits jobs one after another until `stop`, or until the server is gone."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        seq = 0
        while not stop.is_set():
            spec = job_spec(client, seq)
            seq += 1
            try:
                response = http.post("/v1/jobs", json=spec)
            except httpx.TransportError:
                return  # the server was killed under this request: it may or may not have stored it
            if response.status_code != 201:
                errors.append(f"POST /v1/jobs {spec['name']}: {response.status_code} {response.text}")
                return
            acknowledged.append((response.json()["id"], spec))


def fetch_jobs(http: httpx.Client, ids: list[int]) -> dict[int, dict]:
    """The jobs with these ids, with detail, as the list endpoint returns them (in chunks of URL size)."""
    found: dict[int, dict] = {}
    for start in range(0, len(ids), 200):
        chunk = ids[start:start + 200]
        response = http.get("/v1/jobs", params={"id": ",".join(map(str, chunk)), "detail": "true"})
        assert response.status_code == 200, response.text
        found.update((job["id"], job) for job in response.json())
    return found


@pytest.mark.slow
def test_acknowledged_jobs_survive_kill_9(tmp_path, database_url):
    """A user whose submission got `201 {"id": N}` finds job N, exactly as submitted, after a crash."""
    data_dir = tmp_path / "data"
    server = LiveServer(data_dir, database_url).start()
    token = server.token("alice")
    stop = threading.Event()
    acknowledged: list[tuple[int, dict]] = []  # list.append is atomic: shared by the threads
    errors: list[str] = []
    threads = [threading.Thread(target=submitter, args=(server.url, token, c, stop, acknowledged, errors))
               for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(SUBMIT_FOR)
        assert all(thread.is_alive() for thread in threads), f"a client stopped before the kill: {errors}"
        server.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.kill()
    assert not errors, errors
    assert len(acknowledged) >= CLIENTS, "the clients got hardly any job in before the kill"

    ids = [job_id for job_id, _ in acknowledged]
    assert len(set(ids)) == len(ids), "the same id was acknowledged for two submissions"

    restarted = LiveServer(data_dir, database_url).start()
    try:
        with httpx.Client(base_url=restarted.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            stored = fetch_jobs(http, ids)
            missing = sorted(set(ids) - set(stored))
            assert not missing, f"{len(missing)} of {len(ids)} acknowledged jobs lost, e.g. {missing[:10]}"
            for job_id, spec in acknowledged:
                job = stored[job_id]
                assert job["name"] == spec["name"]
                assert job["status"] == "idle"
                assert job["tasks"] == spec["tasks"]
                assert job["resources"] == spec["resources"]
                assert job["labels"] == spec["labels"]

            # Single-job reads agree, and the id counter carries on after the crash.
            for job_id, spec in acknowledged[:: max(1, len(acknowledged) // 20)]:
                response = http.get(f"/v1/jobs/{job_id}")
                assert response.status_code == 200, response.text
                assert response.json()[0]["name"] == spec["name"]
            everything = http.get("/v1/jobs", params={"all": "true"}).json()
            assert len({job["id"] for job in everything}) == len(everything)
            response = http.post("/v1/jobs", json=job_spec(99, 0))
            assert response.status_code == 201, response.text
            assert response.json()["id"] > max(job["id"] for job in everything)
    finally:
        restarted.stop()
    print(f"{database_url.split(':')[0]}: {len(acknowledged)} acknowledged jobs survived kill -9")
