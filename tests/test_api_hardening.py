"""Issue 6: input that used to give 500s, fail at run time or stall the server, played as attacks
against the /v1 API (in-process on SQLite and PostgreSQL, and a live server for what only a real
socket shows)."""
import asyncio
import json
import select as io_select
import socket
import threading
import time

import httpx
import pytest
from sqlalchemy import func, select, update

from gateway.services.jobs import output_path
from schema.identity import Identity
from schema.jobspec import JobSpec
from schema.tables import id_counter, jobs
from tests.conftest import simple_job
from tests.live import LiveServer

MAX_ID = 2**63 - 1


def stored_jobs(api) -> int:
    with api.client.app.state.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(jobs)).scalar_one()


def rejected(api, body, message: str) -> None:
    """POST /jobs answers 400 naming the field and the rule, and stores nothing."""
    before = stored_jobs(api)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = api.request("POST", "/jobs", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"], response.json()
    assert stored_jobs(api) == before


def task(**fields) -> dict:
    return simple_job(tasks=[{"image": "busybox", **fields}])


# --- 1. every number is finite and bounded -----------------------------------------------------

RAW = '{"resources": {"cpus": 1, "memory": %s}, "tasks": [{"image": "busybox"}]}'
BAD_NUMBERS = [
    (simple_job(resources={"cpus": 1, "memory": 1e308}), "resources.memory: must be at most 100000 GB"),
    (simple_job(resources={"cpus": 1, "memory": 2**70}), "resources.memory: must be at most 100000 GB"),
    ((RAW % "NaN").encode(), "resources.memory: must be a finite number"),
    ((RAW % "Infinity").encode(), "resources.memory: must be a finite number"),
    ((RAW % "-Infinity").encode(), "resources.memory: must be a finite number"),
    ((RAW % "1e999").encode(), "resources.memory: must be a finite number"),
    (simple_job(resources={"cpus": 1, "memory": 0.005}), "resources.memory: must be at least 0.01 GB"),
    (simple_job(resources={"cpus": 1, "memoryPerCpu": 0.001}), "resources.memoryPerCpu: must be at least 0.01 GB"),
    (simple_job(resources={"cpus": 4096, "memoryPerCpu": 1000}), "memoryPerCpu times the cpus must be at most"),
    (simple_job(resources={"cpusRange": [1, 2**64], "memory": 1}), "resources.cpusRange[1]: input should be less"),
    (simple_job(resources={"cpusOptions": [2**63, 2**64], "memory": 1}), "resources.cpusOptions[0]"),
    (simple_job(resources={"cpus": 1, "totalCpusRange": [1, 2**70], "memory": 1}), "resources.totalCpusRange[1]"),
    (simple_job(resources={"cpus": 2**70, "memory": 1}), "resources.cpus: input should be less than or equal"),
    (simple_job(resources={"cpus": 1, "memory": 1, "nodes": 2**64}), "resources.nodes"),
    (simple_job(resources={"cpus": 1, "memory": 1, "disk": 2**63}), "resources.disk"),
    (simple_job(resources={"cpus": 1, "memory": 1, "walltime": 2**63}), "resources.walltime: input should be less"),
    (simple_job(resources={"cpus": 1, "memory": 1, "walltime": 366 * 1440 + 1}), "resources.walltime"),
    (task(procsPerNode=2**64), "tasks[0].procsPerNode"),
    (simple_job(policies={"priority": 2**64}), "policies.priority"),
    (b'{"resources": {"cpus": 1, "memory": 1}, "tasks": [{"image": "busybox", "env": {"A": NaN}}]}',
     "tasks[0].env.A: must be a string or a finite number"),
]


@pytest.mark.parametrize("body,message", BAD_NUMBERS, ids=[m for _, m in BAD_NUMBERS])
def test_numbers_out_of_bounds_are_400_not_500(api, body, message):
    rejected(api, body, message)


def test_the_bounds_themselves_are_accepted(api):
    job_id = api.submit(simple_job(resources={"cpus": 1, "memory": 0.01, "walltime": 366 * 1440}))
    [job] = api.request("GET", f"/jobs/{job_id}").json()
    assert job["resources"]["memory"] == 0.01 and job["resources"]["walltime"] == 366 * 1440


# --- 2. one bad row never fails the others of its group ------------------------------------------

def test_a_huge_number_among_concurrent_submissions_fails_alone(api):
    results: list[int] = []
    lock = threading.Lock()

    def submit(spec):
        status = api.request("POST", "/jobs", json=spec).status_code
        with lock:
            results.append(status)

    bad = simple_job(resources={"cpus": 1, "memory": 2**70})
    specs = [simple_job(name=f"ok{n}") for n in range(40)]
    specs.insert(20, bad)
    threads = [threading.Thread(target=submit, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [201] * 40 + [400]
    assert stored_jobs(api) == 40


def test_a_group_whose_commit_fails_is_committed_row_by_row(api):
    """The database refuses one row (here a memory_mb that overflows its column, which validation
    would never let through): only its submitter fails; the others of its group get their ids."""
    service, engine = api.client.app.state.jobs, api.client.app.state.engine
    alice = Identity("alice")
    good = JobSpec.model_validate(simple_job())
    bad = JobSpec.model_validate(simple_job())
    bad.resources.memory = 2**70

    async def submit_together():
        # Holding the id counter makes the submissions queue up, so they are committed as a group.
        with engine.begin() as blocker:
            blocker.execute(update(id_counter).values(value=id_counter.c.value))
            pending = [asyncio.ensure_future(service.submit(alice, spec)) for spec in [good] * 20 + [bad] + [good] * 19]
            await asyncio.sleep(0.5)
        return await asyncio.gather(*pending, return_exceptions=True)

    results = asyncio.run(submit_together())
    assert isinstance(results[20], Exception)
    ids = [r for r in results if not isinstance(r, Exception)]
    assert len(ids) == 39 and len(set(ids)) == 39
    with engine.connect() as connection:
        assert sorted(connection.execute(select(jobs.c.id)).scalars()) == sorted(ids)


# --- 3. what would only fail at run time is rejected at submission -------------------------------

BAD_TASKS = [
    (task(env={"A": "x\u0000y"}), "tasks[0].env.A: must not contain NUL characters"),
    (task(cmd="echo \u0000"), "tasks[0].cmd: must not contain NUL characters"),
    (task(args=["a", "b\u0000"]), "tasks[0].args: item 1 must not contain NUL characters"),
    (task(args="a\u0000"), "tasks[0].args: must not contain NUL characters"),
    (task(workdir="/tmp/\u0000"), "tasks[0].workdir: must not contain NUL characters"),
    (task(image="busybox\u0000"), "tasks[0].image: must not contain NUL characters"),
    (task(env={"A\u0000": "x"}), "tasks[0].env.A\x00: is not an allowed key"),
    (simple_job(artifacts=[{"url": "https://x", "mountpoint": "a:/b\u0000"}]), "artifacts[0].mountpoint"),
    (task(cmd="echo 'unbalanced"), "tasks[0].cmd: cannot be split into words (No closing quotation)"),
    (task(args="a \"b"), "tasks[0].args: cannot be split into words"),
    (task(args=5), "tasks[0].args: must be a string or a list of strings"),
    (task(workdir="relative/dir"), "tasks[0].workdir: must be an absolute path"),
    *[(task(image=image), "tasks[0].image: must be a container image reference")
      for image in ["/etc/passwd", "./x", "../x", "~/x", "Busybox", "busybox:", "a//b", "host:99999999x/a",
                    "busybox@sha256:abc", "-rm", "busybox latest", "https://example.org/image.sif"]],
    (task(image="a" * 256), "tasks[0].image: must have a name of at most 255 characters"),
]


@pytest.mark.parametrize("body,message", BAD_TASKS, ids=[repr(b["tasks"][0])[:60] for b, _ in BAD_TASKS])
def test_what_would_fail_at_run_time_is_400_at_submission(api, body, message):
    rejected(api, body, message)


@pytest.mark.parametrize("image", ["busybox", "busybox:1.36", "docker.io/library/busybox:latest",
                                   "localhost:5000/group/sub/image_name-x:v1.0",
                                   "registry.example.org/a@sha256:" + "0" * 64, "[::1]:5000/a"])
def test_image_references_are_accepted(api, image):
    [job] = api.request("GET", f"/jobs/{api.submit(task(image=image))}").json()
    assert job["tasks"][0]["image"] == image


# --- 4. the seed's contract -------------------------------------------------------------------

def test_args_as_a_string_is_accepted_and_stored_as_given(api):
    job_id = api.submit(task(cmd="echo", args="a 'b c'"))
    [job] = api.request("GET", f"/jobs/{job_id}").json()
    assert job["tasks"][0]["args"] == "a 'b c'"
    listed = api.request("GET", f"/jobs/{api.submit(task(args=['x', 'y z']))}").json()[0]
    assert listed["tasks"][0]["args"] == ["x", "y z"]


def test_unknown_jobs_are_404_for_clone_and_delete(api):
    mine, theirs = api.submit(), api.submit(user="bob")
    for path in ("/jobs/987654/clone",):
        response = api.request("PUT", path)
        assert response.status_code == 404 and response.json() == {"error": "Job does not exist"}
    for path in ("/jobs/987654", f"/jobs/{theirs}", f"/jobs?id={mine},987654", f"/jobs?id={mine},{theirs}"):
        response = api.request("DELETE", path)
        assert response.status_code == 404 and response.json() == {"error": "No such job(s)"}
    assert api.request("GET", f"/jobs/{mine}").json()[0]["status"] == "idle"  # all or nothing
    assert api.request("GET", f"/jobs/{theirs}", user="bob").json()[0]["status"] == "idle"


# --- 5. 500s that become 4xx ------------------------------------------------------------------

@pytest.mark.parametrize("expires", ["²", "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660",
                                     "9" * 5000, "-1", "1_000", " 1"])
def test_download_links_with_odd_expiry_are_403(api, expires):
    response = api.client.get("/v1/storage/scratch/1/files/out.txt", params={"expires": expires, "signature": "x"})
    assert response.status_code == 403
    assert response.json() == {"error": "The link is invalid or has expired"}


def test_download_link_with_non_ascii_signature_is_403(api):
    url = api.client.app.state.store.signed_url("scratch/1/files/out.txt")
    response = api.client.get(url.split("signature=")[0] + "signature=%C3%A9")
    assert response.status_code == 403


@pytest.mark.parametrize("offset", [14, 15, 10**6, 2**62, MAX_ID])
def test_stdout_offset_past_the_end_is_empty(api, offset):
    job_id = api.submit()
    path = output_path(api.settings.data_dir, job_id, 0, "stdout")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"line 1\nline 2\n")
    response = api.request("GET", f"/jobs/{job_id}/stdout?offset={offset}")
    assert response.status_code == 200 and response.content == b""
    assert api.request("GET", f"/jobs/{job_id}/stdout?offset={MAX_ID + 1}").status_code == 400


def test_stdout_is_streamed_whole_from_any_offset(api):
    job_id = api.submit()
    data = bytes(range(256)) * 40_000  # 10 MB, many pieces
    path = output_path(api.settings.data_dir, job_id, 0, "stderr")
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with api.client.stream("GET", f"/v1/jobs/{job_id}/stderr", headers=api.headers()) as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers  # sent piece by piece as read from disk
        assert response.read() == data
    assert api.request("GET", f"/jobs/{job_id}/stderr?offset=1000001").content == data[1000001:]


@pytest.mark.parametrize("query", ["?id=\u0661", "?id=1_0", "?completed=true&num=\u0661", "?completed=true&num=1_0"])
def test_non_ascii_digits_in_parameters_are_400(api, query):
    assert api.request("GET", "/jobs" + query).status_code == 400


@pytest.mark.parametrize("query", ["?name=a%00", "?constraint=a%3Db%00", "?constraint=a%00%3Db"])
def test_nul_characters_in_listing_filters_are_400(api, query):
    response = api.request("GET", "/jobs" + query)
    assert response.status_code == 400 and "must not contain NUL characters" in response.json()["error"]


def test_a_stored_job_that_breaks_newer_rules_cannot_be_cloned_but_is_not_a_500(api):
    job_id = api.submit()
    with api.client.app.state.engine.begin() as connection:  # as stored before images were checked
        spec = connection.execute(select(jobs.c.spec).where(jobs.c.id == job_id)).scalar_one()
        spec["tasks"][0]["image"] = "/etc/passwd"
        connection.execute(update(jobs).where(jobs.c.id == job_id).values(spec=spec))
    response = api.request("PUT", f"/jobs/{job_id}/clone")
    assert response.status_code == 400
    assert response.json()["error"].startswith("The job cannot be cloned: Invalid job description: tasks[0].image")


# --- 7. big answers do not stall the server ------------------------------------------------------

def test_listings_that_hang_take_two_threads_at_most(api, monkeypatch):
    """45 listings stuck in the database (more than anyio's 40 worker threads) leave the health
    check, submissions and single-job reads working."""
    service = api.client.app.state.jobs
    release, started = threading.Event(), threading.Semaphore(0)
    real_list = type(service)._list

    def stuck_list(self, identity, query):
        if query.ids is None:  # the listings, not single-job reads
            started.release()
            release.wait(30)
        return real_list(self, identity, query)

    monkeypatch.setattr(type(service), "_list", stuck_list)
    job_id = api.submit()
    statuses: list[int] = []
    listers = [threading.Thread(target=lambda: statuses.append(api.request("GET", "/jobs?detail=true").status_code))
               for _ in range(45)]
    for lister in listers:
        lister.start()
    try:
        assert started.acquire(timeout=10)
        time.sleep(0.5)
        began = time.monotonic()
        assert api.request("GET", "/health", user=None).status_code == 204
        assert api.request("GET", f"/jobs/{job_id}").status_code == 200
        assert api.request("POST", "/jobs", json=simple_job()).status_code == 201
        assert time.monotonic() - began < 10
    finally:
        release.set()
        for lister in listers:
            lister.join()
    assert statuses == [200] * 45


@pytest.fixture
def live(tmp_path):
    with LiveServer(tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}",
                    extra_args=("--client-timeout", "1")) as server:
        yield server


def _trickle(sock: socket.socket, data: bytes) -> None:
    """Send `data` a byte every 0.1 s, until the server answers."""
    for byte in data:
        if io_select.select([sock], [], [], 0)[0]:
            return
        sock.sendall(bytes([byte]))
        time.sleep(0.1)


def _answer(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed."""
    sock.settimeout(limit)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic()


def test_clients_that_trickle_their_headers_are_cut_off(live):
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        began = time.monotonic()
        _trickle(sock, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20)
        answer, closed = _answer(sock, 5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "The request headers were not received within 1 seconds"}
    assert closed - began < 3


def test_idle_connections_are_closed(live):
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        began = time.monotonic()
        answer, closed = _answer(sock, 5)
    assert answer.startswith(b"HTTP/1.1 408 ") and closed - began < 3


def test_clients_that_trickle_their_body_are_cut_off(live):
    body = json.dumps(simple_job()).encode()
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live.token()}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        began = time.monotonic()
        _trickle(sock, body[:30])
        answer, closed = _answer(sock, 5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"The request body was not received within 1 seconds" in answer
    assert closed - began < 3
    # A prompt client on the same server is served as usual.
    response = httpx.post(f"{live.url}/v1/jobs", json=simple_job(),
                          headers={"Authorization": f"Bearer {live.token()}"})
    assert response.status_code == 201
    assert httpx.get(f"{live.url}/v1/jobs", headers={"Authorization": f"Bearer {live.token()}"}).json()[0]["id"] \
        == response.json()["id"]
