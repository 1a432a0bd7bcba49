"""No VM is leaked and no job runs twice when the provisioner crashes mid-launch (DESIGN.md 3.4).

The gateway runs with `serve --no-provisioner` and the provisioner as a process of its own
(`prominence-server provisioner`, as in tests/test_split_processes.py), both on one SQLite
database; one EC2 cloud on moto through the tests' Ec2Proxy (tests/services.py). Faults: the
first RunInstances fails (InternalError, 500), every RunInstances answers after 3 s, and one
instance address of the subnet (127.0.8.7) has no sshd, so the instance that gets it fails its
configure phase. Three failures within 800 s would put the only cloud in the penalty box: this
test makes exactly two (one create, one configure).

The provisioner is killed with SIGKILL while two nodes are configuring and a RunInstances is under
way; that call still creates its instance in moto after the kill (an instance whose node row has
no provider id). The restarted provisioner fails the orphaned boots and its reconcile destroys
the three instances the killed one created; the jobs then run, each exactly once.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from schema.db import make_engine
from schema.tables import jobs, nodes
from tests.conftest import REPO
from tests.images import busybox_image
from tests.jobs import job, submit, wait_for
from tests.live import LiveServer
from tests.services import (
    Ec2Proxy,
    prepare_ec2_world,
    sshd_server,
    subnet_host_addresses,
)
from tests.test_ec2_cloud import (  # noqa: F401
    apply,
    cli,
    client,
    ec2_cloud,
    eventually,
    moto,
    stop_agents,
)

pytestmark = pytest.mark.slow

NO_SSHD = "127.0.8.7"  # the 4th instance address: the restarted provisioner's first instance gets it
LIVE = ("creating", "configuring", "ready", "draining")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    addresses = [a for a in subnet_host_addresses("127.0.8.0/24") if a != NO_SSHD]
    with sshd_server(tmp_path_factory.mktemp("sshd"), addresses=addresses) as server:
        yield server


class Provisioner:
    """`prominence-server provisioner` in a process group of its own (so that what a SIGKILL
    leaves behind, such as an ansible run, can be stopped at the end)."""

    def __init__(self, server: LiveServer, log: Path):
        self.server, self.log = server, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "provisioner", "--data-dir", str(self.server.data_dir),
                 "--database-url", self.server.database_url, "--public-url", self.server.url],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """kill -9 of the provisioner alone, as a crash does."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever it left in its group
        except ProcessLookupError:
            pass


def rows(database_url: str, table, *where) -> list:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(table).where(*where).order_by(table.c.id)).all()
    finally:
        engine.dispose()


def tagged(world, service_id: str) -> dict[str, str]:
    """name -> state of this service's instances in moto (terminated ones too)."""
    return {i.name: i.state for i in world.driver().list_nodes()
            if i.extra.get("tags", {}).get("prominence-service") == service_id}


def leaked(world, service_id: str, database_url: str) -> set[str]:
    """This service's instances in moto that are not terminated, yet not a live node in the database."""
    live = {n.name for n in rows(database_url, nodes, nodes.c.state.in_(LIVE))}
    return {name for name, state in tagged(world, service_id).items() if state != "terminated"} - live


def tracebacks(text: str) -> bool:
    return "Traceback (most recent call last)" in text


def test_a_provisioner_killed_mid_launch_leaks_no_vm_and_runs_each_job_once(tmp_path, moto, sshd):
    busybox_image()
    server = LiveServer(tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}")  # --no-provisioner
    node_root = tmp_path / "ec2-nodes"
    first = Provisioner(server, tmp_path / "provisioner-1.log")
    second = Provisioner(server, tmp_path / "provisioner-2.log")
    started = time.monotonic()
    with Ec2Proxy(moto) as proxy:
        try:
            server.start()
            first.start()
            eventually(lambda: "local" in cli(server.data_dir, server.database_url, "cloud", "list"), 30,
                       "the provisioner made the local cloud")
            world = prepare_ec2_world(proxy.url)
            apply(server, ec2_cloud("aws", world, sshd, node_root, flavours=[
                {"name": "t2.micro", "cpus": 1, "memory_mb": 1024, "disk_gb": 10, "price": 0.0116}]))
            service_id = (server.data_dir / "service-id").read_text().strip()
            proxy.fail("RunInstances", "InternalError", "An internal error has occurred", status=500, times=1)
            proxy.delay("RunInstances", 3)

            with client(server) as api:
                ids = [submit(api, job(busybox_image(), {"cmd": f"echo job {i}"})) for i in range(3)]

                # Two nodes configuring, the retry of the failed create under way: crash.
                def mid_launch():
                    states = [n.state for n in rows(server.database_url, nodes)]
                    return proxy.count("RunInstances") >= 4 and states.count("configuring") >= 1 and \
                        "creating" in states
                eventually(mid_launch, 30, "a launch under way")
                first.kill()
                before = rows(server.database_url, nodes)
                assert any(n.state == "creating" and not n.provider_id for n in before), before
                # The call under way still creates its instance, after the crash.
                eventually(lambda: len(tagged(world, service_id)) == 3, 15, "moto creates the third instance")
                orphans = set(tagged(world, service_id))
                assert orphans == {n.name for n in before if n.state in ("creating", "configuring")}, before
                assert leaked(world, service_id, server.database_url) == set()  # still "live" in the database
                proxy.clear()  # faults and delays end; the calls counter too

                second.start()
                # Its start fails the orphaned boots, then reconciles: the three instances go.
                eventually(lambda: all(tagged(world, service_id)[name] == "terminated" for name in orphans), 30,
                           "the restarted provisioner destroys the instances of the boots it orphaned")
                for node in rows(server.database_url, nodes, nodes.c.name.in_(orphans)):
                    assert (node.state, node.state_reason) == (
                        "failed", "the provisioner restarted while the node booted"), node
                eventually(lambda: not leaked(world, service_id, server.database_url), 15, "no leaked instance")

                for i, job_id in enumerate(ids):
                    done = wait_for(api, job_id, timeout=max(30, 170 - (time.monotonic() - started)))
                    assert done["status"] == "completed", done
                    assert api.get(f"/jobs/{job_id}/stdout").text == f"job {i}\n"
                    assert "retries" not in done["execution"], done
                    assert done["execution"]["tasks"][0]["exitCode"] == 0, done

            # Exactly once: one attempt each (every claim by an agent starts a new attempt).
            assert [(j.id, j.attempt, j.retries) for j in rows(server.database_url, jobs)] == \
                [(job_id, 1, 0) for job_id in ids]
            # A job may have run on a node that finished its job before the node booted for it
            # was ready: let the boots under way end, then compare moto with the database.
            eventually(lambda: not rows(server.database_url, nodes, nodes.c.state.in_(("creating", "configuring"))),
                       60, "the boots under way end")
            all_nodes = rows(server.database_url, nodes)
            configure_failed = [n for n in all_nodes if n.address == NO_SSHD]
            assert len(configure_failed) == 1 and configure_failed[0].state == "failed", all_nodes
            assert configure_failed[0].state_reason.startswith("Infrastructure deployment failed: configure"), \
                configure_failed[0]
            assert [n.state for n in all_nodes if n.state not in ("failed", "ready")] == [], all_nodes
            assert 1 <= len([n for n in all_nodes if n.state == "ready"]) <= 3, all_nodes
            assert not leaked(world, service_id, server.database_url)
            live = {n.name for n in all_nodes if n.state in LIVE}
            assert {name for name, state in tagged(world, service_id).items() if state == "running"} == live
        finally:
            second.stop()
            first.stop()
            server.stop()
            stop_agents(node_root)
    for log in (server.log, first.log, second.log):
        assert not tracebacks(log.read_text()), log.read_text()[-6000:]
