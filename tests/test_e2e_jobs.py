"""Jobs really run: a live server bursts onto the `local` cloud, configures each node with the real
playbook through ansible-runner, and the node's agent runs every task in a real podman container
(image built locally from busybox-static; nothing is pulled from a registry).

One server serves the whole module, so nodes are created once and reused while they are busy. The
core path (inputs and outputs, a failing task, delete while running) also runs on a second
server on PostgreSQL.
"""
import base64
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from provisioner.drivers.local import LocalNodeDriver
from schema.db import make_engine
from schema.enums import StatusReason
from schema.tables import jobs, nodes
from tests.images import busybox_image, podman_env
from tests.conftest import tgz
from tests.jobs import describe, job, submit, wait_for
from tests.live import LiveServer
from tests.services import create_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HEARTBEAT_TIMEOUT = 8


@pytest.fixture(scope="module")
def image():
    return busybox_image()


def serve(root: Path, database_url: str):
    live = LiveServer(root / "data", database_url, provisioner=True,
                      extra_args=("--idle-timeout", "120", "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
                                  "--local-cpus", "2", "--local-memory-mb", "4096"))
    with live:
        yield live
    # The server destroys its nodes when it stops; this is the safety net if it could not.
    driver = LocalNodeDriver(str(live.data_dir / "nodes"))
    for node in driver.list_nodes():
        driver.destroy_node(node)


def api_client(server: LiveServer):
    with httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {server.token()}"},
                      timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def server(tmp_path_factory, image):
    root = tmp_path_factory.mktemp("e2e")
    yield from serve(root, f"sqlite:///{root / 'state.db'}")


@pytest.fixture(scope="module")
def client(server):
    yield from api_client(server)


@pytest.fixture(scope="module")
def postgresql_server(tmp_path_factory, image, postgres_base_url):
    yield from serve(tmp_path_factory.mktemp("e2e-pg"), create_database(postgres_base_url, "e2e_jobs"))


@pytest.fixture(scope="module")
def postgresql_client(postgresql_server):
    yield from api_client(postgresql_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def client_on_each_database(request):
    """The core path runs on both databases the service supports."""
    return request.getfixturevalue("client" if request.param == "sqlite" else "postgresql_client")


def containers_of(job_id: int) -> list[str]:
    names = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], env=podman_env(),
                           capture_output=True, text=True).stdout.split()
    return [n for n in names if f"-{job_id}-" in n]


def test_job_with_inputs_env_two_tasks_and_outputs(client_on_each_database, image):
    client = client_on_each_database
    script = base64.b64encode(b"#!/bin/sh\necho \"script sees $GREETING\"\n").decode()
    spec = job(image,
               {"cmd": "sh -c 'mkdir -p results && echo $GREETING > results/a.txt && ./hello.sh && pwd'",
                "env": {"GREETING": "hi there"}},
               {"cmd": "sh", "args": ["-c", "echo second task; echo to-stderr >&2; echo data > out.txt; "
                                            "echo $PROMINENCE_JOB_ID $PROMINENCE_CPUS"]},
               {"cmd": "echo", "args": "'the seed writes' args as-a-string"},
               inputs=[{"filename": "hello.sh", "content": script, "executable": True}],
               outputFiles=["out.txt"], outputDirs=["results"], name="full-job")
    job_id = submit(client, spec)
    done = wait_for(client, job_id)
    assert done["status"] == "completed", done
    stdout = client.get(f"/jobs/{job_id}/stdout").text
    assert stdout.splitlines() == ["script sees hi there", "/home/user", "second task", f"{job_id} 1",
                                   "the seed writes args as-a-string"]
    assert client.get(f"/jobs/{job_id}/stderr").text == "to-stderr\n"
    execution = done["execution"]
    assert [t["exitCode"] for t in execution["tasks"]] == [0, 0, 0]
    for task in execution["tasks"]:
        assert task["imagePullTime"] == -1 and task["imageSha256"]
        assert task["wallTimeUsage"] >= 0 and "cpuTimeUsage" in task and "maxResidentSetSizeKB" in task
    assert execution["site"] == "local"
    assert execution["provisionedResources"]["cpus"] >= 1
    assert "podman" in execution["runtimeVersion"]
    assert execution["cpu"]["model"]
    assert "stageInTime" in execution and "stageOutTime" in execution
    # Output URLs work without the token, as the CLI downloads them.
    [out_file], [out_dir] = done["outputFiles"], done["outputDirs"]
    assert out_file["name"] == "out.txt" and out_file["size"] == 5
    assert httpx.get(out_file["url"]).content == b"data\n"
    archive = tarfile.open(fileobj=io.BytesIO(httpx.get(out_dir["url"]).content))
    assert archive.extractfile("results/a.txt").read() == b"hi there\n"
    tampered = out_file["url"].replace("signature=", "signature=0")
    assert httpx.get(tampered).status_code == 403


def test_artifacts_are_fetched_unpacked_and_mounted(client, image, remote):
    """From a host elsewhere on the network: the agent fetches artifacts through the job's network."""
    root, url = remote.root, remote.url
    (root / "data.tgz").write_bytes(tgz({"data/a.txt": b"artifact content\n"}))
    job_id = submit(client, job(image, {"cmd": "cat /mnt/data/a.txt"},
                                artifacts=[{"url": f"{url}/data.tgz", "mountpoint": "data:/mnt/data"}]))
    done = wait_for(client, job_id)
    assert done["status"] == "completed", done
    assert client.get(f"/jobs/{job_id}/stdout").text == "artifact content\n"
    missing = wait_for(client, submit(client, job(image, {"cmd": "true"}, artifacts=[{"url": f"{url}/nope.tgz"}],
                                                  policies={"maximumRetries": 0})))
    assert (missing["status"], missing["statusReason"]) == ("failed", "Artifact download failed")


def test_failing_task_stops_the_rest_unless_failures_are_ignored(client_on_each_database, image):
    client = client_on_each_database
    tasks = ({"cmd": "sh -c 'echo first; exit 3'"}, {"cmd": "echo second"})
    strict = submit(client, job(image, *tasks))
    lenient = submit(client, job(image, *tasks, policies={"ignoreTaskFailures": True}))
    strict_done, lenient_done = wait_for(client, strict), wait_for(client, lenient)
    assert strict_done["status"] == "completed"
    assert [t.get("exitCode") for t in strict_done["execution"]["tasks"]] == [3]
    assert client.get(f"/jobs/{strict}/stdout").text == "first\n"
    assert [t["exitCode"] for t in lenient_done["execution"]["tasks"]] == [3, 0]
    assert client.get(f"/jobs/{lenient}/stdout").text == "first\nsecond\n"


def test_task_retries(client, image):
    job_id = submit(client, job(image, {"cmd": "sh -c 'echo try; exit 1'"}, policies={"maximumTaskRetries": 2}))
    done = wait_for(client, job_id)
    assert done["execution"]["tasks"][0]["retries"] == 2
    assert client.get(f"/jobs/{job_id}/stdout").text == "try\n" * 3


def test_memory_limit_kills_the_job(client, image):
    job_id = submit(client, job(image, {"cmd": "sh -c 'head -c 200m /dev/zero | tail > /dev/null'"}, memory=0.05))
    done = wait_for(client, job_id)
    assert (done["status"], done["statusReason"]) == ("killed", "Job used too much memory")


def test_stdout_streams_while_running_and_delete_stops_the_container(client_on_each_database, image):
    client = client_on_each_database
    job_id = submit(client, job(image, {"cmd": "sh -c 'echo started; sleep 300'"}))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = client.get(f"/jobs/{job_id}/stdout")
        if response.status_code == 200 and response.text == "started\n":
            break
        time.sleep(0.2)
    assert describe(client, job_id)["status"] == "running"
    assert client.get(f"/jobs/{job_id}/stdout?offset=8").text == ""
    assert containers_of(job_id)
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    deadline = time.monotonic() + 10
    while containers_of(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containers_of(job_id) == [], "the container still runs after the job was deleted"
    done = describe(client, job_id)
    assert (done["status"], done["statusReason"]) == ("deleted", "Job deleted by user")


def test_sidecar_runs_alongside_and_is_stopped(client, image):
    job_id = submit(client, job(image, {"type": "sidecar", "cmd": "sh -c 'while true; do sleep 0.1; done'"},
                                {"cmd": "sh -c 'sleep 1; echo main done'"}))
    done = wait_for(client, job_id, timeout=60)
    assert done["status"] == "completed"
    assert client.get(f"/jobs/{job_id}/stdout").text == "main done\n"
    assert containers_of(job_id) == []


def test_udocker_fails_clearly(client, image):
    done = wait_for(client, submit(client, job(image, {"cmd": "true", "runtime": "udocker"})))
    assert done["status"] == "failed"
    assert "udocker is not available" in done["statusReason"]


def test_walltime_kills_the_job_and_queue_time_is_limited(client, image):
    """Both limits are in minutes, so this test waits a minute for both at once. A job that no
    enabled cloud can ever run fails at once; one that waits (here: on two nodes at once, which
    the planner does not do yet) fails at its maximumTimeInQueue."""
    job_id = submit(client, job(image, {"cmd": "sleep 600"}, resources={"walltime": 1}))
    impossible = submit(client, job(image, {"cmd": "true"}, cpus=64))
    queued = submit(client, job(image, {"cmd": "true"}, resources={"nodes": 2}, policies={"maximumTimeInQueue": 1}))
    failed = wait_for(client, impossible, timeout=10)
    assert failed["status"] == "failed" and failed["statusReason"].startswith("No matching resources")
    deadline = time.monotonic() + 10  # it may have arrived a tick after the impossible one
    while not (waiting := describe(client, queued))["statusReason"].startswith("No matching resources"):
        assert time.monotonic() < deadline, waiting
        time.sleep(0.2)
    assert waiting["status"] == "idle"
    done = wait_for(client, job_id, timeout=180)
    assert (done["status"], done["statusReason"]) == ("killed", "Walltime limit exceeded")
    assert 55 < done["events"]["endTime"] - done["events"]["startTime"] < 120
    expired = wait_for(client, queued, timeout=60)
    assert (expired["status"], expired["statusReason"]) == ("failed", "Maximum time queued was exceeded")


def database_row(server, statement):
    """One row of the server's database."""
    engine = make_engine(server.database_url)
    with engine.connect() as connection:
        row = connection.execute(statement).one()
    engine.dispose()
    return row


def test_killed_agent_jobs_run_again_elsewhere(client, server, image):
    job_id = submit(client, job(image, {"cmd": "sh -c 'sleep 3; echo finished'"}))
    wait_for(client, job_id, statuses=("running",))
    node_of_job = select(jobs.c.node_id).where(jobs.c.id == job_id)
    first_node = database_row(server, node_of_job).node_id
    for pidfile in (server.data_dir / "nodes").glob("*/agent.pid"):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    done = wait_for(client, job_id, timeout=180)
    assert done["status"] == "completed"
    assert done["execution"]["retries"] == 1
    assert client.get(f"/jobs/{job_id}/stdout").text == "finished\n"
    assert database_row(server, node_of_job).node_id != first_node, "it ran again on the node that was lost"
    lost = database_row(server, select(nodes.c.state, nodes.c.state_reason).where(nodes.c.id == first_node))
    assert tuple(lost) == ("lost", StatusReason.NODE_LOST)


def test_cli_create_stdout_describe(server, image, tmp_path):
    env = {**os.environ, "PROMINENCE_URL": server.url + "/v1", "PROMINENCE_TOKEN": server.token("cli-user"),
           "HOME": str(tmp_path)}
    cli = str(Path(os.environ.get("VIRTUAL_ENV", Path(__file__).parents[1] / ".venv")) / "bin" / "prominence")

    def run(*args):
        out = subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    job_id = int(run("create", "--cpus", "1", "--memory", "1", image, "echo hello from the CLI").split()[-1])
    deadline = time.monotonic() + 120
    while json.loads(run("describe", str(job_id)))["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.5)
    described = json.loads(run("describe", str(job_id)))
    assert described["status"] == "completed"
    assert described["execution"]["tasks"][0]["exitCode"] == 0
    assert run("stdout", str(job_id)).strip() == "hello from the CLI"
