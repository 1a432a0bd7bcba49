"""Nodes end as docs/running-jobs.md says, for real: a live server with its provisioner, nodes on the
`local` cloud configured by the playbook, real agents and podman containers. Idle nodes are
deleted; the service's nodes stop with it (and a restart runs their jobs); an agent that loses its
gateway stops its containers and exits. No agent or container is left behind."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from provisioner.drivers.local import LocalNodeDriver, process_alive
from provisioner.service import SERVICE_STOPPED
from schema.db import make_engine
from schema.tables import jobs, nodes
from tests.conftest import REPO
from tests.images import busybox_image, podman_env
from tests.live import LiveServer
from tests.jobs import describe, job, submit, wait_for

pytestmark = pytest.mark.slow

ONE_CPU = ("--local-cpus", "1", "--local-memory-mb", "1024")


@pytest.fixture
def data(tmp_path):
    """A server's data dir and SQLite database; whatever nodes are left in it are destroyed at the end."""
    yield tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}"
    driver = LocalNodeDriver(str(tmp_path / "data" / "nodes"))
    for node in driver.list_nodes():
        driver.destroy_node(node)


def api(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {server.token()}"},
                        timeout=30)


def node_rows(database_url: str) -> list:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(nodes).order_by(nodes.c.id)).all()
    engine.dispose()
    return rows


def agents(data_dir: Path) -> dict[str, int]:
    """node name -> pid of its agent, for the nodes on disk now."""
    return {path.parent.name: int(path.read_text()) for path in (data_dir / "nodes").glob("*/agent.pid")}


def containers_named(prefix: str) -> list[str]:
    names = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], env=podman_env(),
                           capture_output=True, text=True).stdout.split()
    return [name for name in names if name.startswith(prefix)]


def wait_for_container(data_dir: Path, job_id: int) -> dict[str, int]:
    """Waits until the job's container runs (its status says running from the claim on); returns
    the agents running now."""
    running = agents(data_dir)
    eventually(lambda: any(containers_named(f"{name}-{job_id}-") for name in running), 30,
               "the job's container starts")
    return running


def assert_nodes_stopped_with_the_service(data_dir: Path, database_url: str, agents_before: dict[str, int]) -> None:
    assert not any(process_alive(pid) for pid in agents_before.values()), "an agent outlived the service"
    assert not any(containers_named(f"{name}-") for name in agents_before), "a container outlived the service"
    assert list((data_dir / "nodes").iterdir()) == []
    assert {(n.state, n.state_reason) for n in node_rows(database_url)} == {("deleted", "the service stopped")}


def eventually(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_an_idle_node_is_deleted_after_the_idle_timeout(data):
    data_dir, database_url = data
    image = busybox_image()
    with LiveServer(data_dir, database_url, provisioner=True,
                    extra_args=("--idle-timeout", "3", *ONE_CPU)) as server, api(server) as client:
        done = wait_for(client, submit(client, job(image, {"cmd": "echo ran"})), timeout=60)
        assert done["status"] == "completed", done
        [node] = node_rows(database_url)
        pid = agents(data_dir)[node.name]
        eventually(lambda: node_rows(database_url)[0].state == "deleted", 30, "the idle node is deleted")
        assert node_rows(database_url)[0].state_reason == "idle"
        assert not (data_dir / "nodes" / node.name).exists()
        assert not process_alive(pid)


@pytest.mark.timeout(180)
def test_the_service_stops_its_nodes_and_runs_their_jobs_after_a_restart(data):
    data_dir, database_url = data
    image = busybox_image()
    server = LiveServer(data_dir, database_url, provisioner=True, extra_args=ONE_CPU).start()
    try:
        with api(server) as client:
            job_id = submit(client, job(image, {"cmd": "sh -c 'echo started; sleep 6; echo finished'"}))
            wait_for(client, job_id, statuses=("running",), timeout=60)
        running = wait_for_container(data_dir, job_id)
        server.process.send_signal(signal.SIGINT)  # Ctrl-C
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()  # the agent's waiting claim was answered, not cut off
    assert_nodes_stopped_with_the_service(data_dir, database_url, running)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        requeued = connection.execute(select(jobs).where(jobs.c.id == job_id)).one()
    engine.dispose()
    assert (requeued.status, requeued.status_reason, requeued.retries) == ("idle", SERVICE_STOPPED, 0)

    with LiveServer(data_dir, database_url, provisioner=True, extra_args=ONE_CPU) as server, \
            api(server) as client:
        done = wait_for(client, job_id, timeout=90)
        assert done["status"] == "completed", done
        assert client.get(f"/jobs/{job_id}/stdout").text == "started\nfinished\n"
        assert "retries" not in done["execution"]  # a planned stop is not the job's failure


@pytest.mark.timeout(120)
def test_the_provisioner_command_stops_its_nodes_on_sigterm(data):
    data_dir, database_url = data
    image = busybox_image()
    with LiveServer(data_dir, database_url) as server, api(server) as client:
        provisioner = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "provisioner", "--data-dir", str(data_dir), "--database-url",
             database_url, "--public-url", server.url, *ONE_CPU],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            job_id = submit(client, job(image, {"cmd": "sleep 300"}))
            wait_for(client, job_id, statuses=("running",), timeout=60)
            running = wait_for_container(data_dir, job_id)
            provisioner.terminate()
            assert provisioner.wait(timeout=60) == 0
        finally:
            provisioner.kill()
        assert_nodes_stopped_with_the_service(data_dir, database_url, running)
        requeued = describe(client, job_id)
        assert (requeued["status"], requeued["statusReason"]) == ("idle", SERVICE_STOPPED)


@pytest.mark.timeout(120)
def test_an_agent_that_loses_its_gateway_stops_its_containers_and_exits(data):
    data_dir, database_url = data
    image = busybox_image()
    gateway_timeout = 4
    server = LiveServer(data_dir, database_url, provisioner=True,
                        extra_args=("--agent-gateway-timeout", str(gateway_timeout), *ONE_CPU)).start()
    try:
        with api(server) as client:
            job_id = submit(client, job(image, {"cmd": "sleep 300"}))
            wait_for(client, job_id, statuses=("running",), timeout=60)
        [(name, pid)] = wait_for_container(data_dir, job_id).items()
        assert json.loads((data_dir / "nodes" / name / "agent.json").read_text())["gateway_timeout"] == gateway_timeout
        server.kill()
        lost = time.monotonic()
        eventually(lambda: not process_alive(pid), gateway_timeout + 20, "the agent exits")
    finally:
        server.stop()
    assert time.monotonic() - lost >= gateway_timeout - 2  # counted from its last heartbeat (every 2 s)
    assert containers_named(f"{name}-") == []
    log = (data_dir / "nodes" / name / "agent.log").read_text()
    assert "Traceback" not in log
    assert [line for line in log.splitlines() if " ERROR " in line][-1].endswith(
        "stopping this node's containers and exiting")
