"""Bursting onto EC2 for real: libcloud's own EC2 driver against moto's EC2 server, through the
tests' proxy (tests/services.py Ec2Proxy: it fixes moto's XML namespace and injects faults).

What is real: the server and its provisioner, moto's EC2 API, libcloud's EC2 driver, the
playbook run by ansible-runner over SSH, the agent, podman. What stands in: moto's instances
are not machines. Their addresses are in a subnet on this machine's loopback (127.0.8.0/24), where
the test's sshd answers, so "the VM" is this machine; each node gets its own directory under the
cloud's node_root. `install_packages` is off: the packages are already here (the test machine
is the VM), and the playbook would otherwise reach for the package mirrors.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select

from provisioner.drivers.local import process_alive
from schema.db import make_engine
from schema.tables import clouds, nodes
from tests.conftest import REPO
from tests.images import busybox_image
from tests.jobs import job, submit, wait_for
from tests.live import LiveServer
from tests.services import Ec2Proxy, moto_server, prepare_ec2_world, sshd_server, subnet_host_addresses

pytestmark = pytest.mark.slow

FLAVOURS = [{"name": "t2.micro", "cpus": 1, "memory_mb": 1024, "disk_gb": 10, "price": 0.0116},
            {"name": "t3.small", "cpus": 2, "memory_mb": 2048, "disk_gb": 20, "price": 0.0208}]


@pytest.fixture(scope="module")
def moto():
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with sshd_server(tmp_path_factory.mktemp("sshd"), addresses=subnet_host_addresses("127.0.8.0/24")) as server:
        yield server


@pytest.fixture
def proxy(moto):
    with Ec2Proxy(moto) as proxy:
        yield proxy


def cli(data_dir: Path, database_url: str, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--data-dir", str(data_dir),
                             "--database-url", database_url], cwd=REPO, input=stdin, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def ec2_cloud(name: str, world, sshd, node_root: Path, **fields) -> dict:
    return {"name": name, "provider": "ec2", "driver_args": world.driver_args,
            "create_options": {"ex_subnet": {"id": world.subnet_id}}, "image": world.image_id,
            "region": "us-east-1", "site": name, "ssh_user": "root", "ssh_port": sshd.port,
            "node_root": str(node_root), "install_packages": False, "flavours": FLAVOURS,
            "running_timeout": 60, "configure_timeout": 120, "create_timeout": 30, **fields,
            "credentials": {"key": world.key, "secret": world.secret,
                            "ssh_private_key": Path(sshd.key_file).read_text()}}


def apply(server: LiveServer, *documents: dict) -> None:
    path = server.data_dir.parent / "clouds.yaml"
    path.write_text(yaml.safe_dump(list(documents)))
    cli(server.data_dir, server.database_url, "cloud", "apply", str(path))
    cli(server.data_dir, server.database_url, "cloud", "disable", "local")


def node_rows(database_url: str) -> list:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(nodes).order_by(nodes.c.id)).all()
    engine.dispose()
    return rows


def eventually(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout} s: {what}")


def stop_agents(node_root: Path) -> None:
    """Whatever a failed test left running (the instances are not machines that stop)."""
    for pid_file in node_root.glob("*/agent.pid"):
        try:
            subprocess.run(["kill", "-9", "--", f"-{int(pid_file.read_text())}"], capture_output=True)
        except ValueError:
            pass


@pytest.fixture
def server(tmp_path):
    busybox_image()
    server = LiveServer(tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}", provisioner=True)
    server.node_root = tmp_path / "ec2-nodes"
    server.start()
    yield server
    server.stop()
    stop_agents(server.node_root)


def client(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {server.token()}"},
                        timeout=30)


def test_a_job_runs_on_an_ec2_instance_that_is_deleted_when_idle(server, proxy, sshd):
    world = prepare_ec2_world(proxy.url)
    apply(server, ec2_cloud("aws", world, sshd, server.node_root, idle_timeout=3))
    with client(server) as api:
        job_id = submit(api, job("busybox", {"cmd": "echo hello from ec2"}))
        done = wait_for(api, job_id, timeout=180)
        assert done["status"] == "completed", done
        assert api.get(f"/jobs/{job_id}/stdout").text == "hello from ec2\n"

    [node] = node_rows(server.database_url)
    assert (node.cloud, node.flavour, node.price) == ("aws", "t2.micro", 0.0116)
    assert node.address.startswith("127.0.8.")
    [instance] = [i for i in world.driver().list_nodes() if i.name == node.name]
    assert instance.id == node.provider_id
    assert instance.extra["tags"]["prominence-node"] == str(node.id)
    agent_pid = int((server.node_root / node.name / "agent.pid").read_text())

    # Idle for 3 s: the node is deleted, its instance terminated in moto, and its agent (which
    # the terminated "VM" does not take with it here) exits when the gateway refuses it.
    eventually(lambda: node_rows(server.database_url)[0].state == "deleted", 30, "the idle node is deleted")
    eventually(lambda: all(i.state == "terminated" for i in world.driver().list_nodes() if i.name == node.name),
               10, "the instance is terminated")
    eventually(lambda: not process_alive(agent_pid), 20, "the agent exits")

    listing = json.loads(cli(server.data_dir, server.database_url, "cloud", "list", "--json"))
    aws = next(c for c in listing if c["name"] == "aws")
    assert aws["spend"] > 0 and aws["instances"] == 0 and aws["has_credentials"] is True
    shown = cli(server.data_dir, server.database_url, "cloud", "show", "aws")
    assert world.secret not in shown.replace('"secret"', "") and "BEGIN OPENSSH" not in shown
    engine = make_engine(server.database_url)
    with engine.connect() as connection:
        sealed = connection.execute(select(clouds.c.credentials).where(clouds.c.name == "aws")).scalar_one()
    engine.dispose()
    assert "OPENSSH" not in sealed and "testing" not in sealed
    assert "BEGIN OPENSSH" not in server.log.read_text()
