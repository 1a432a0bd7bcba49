"""The `ssh` cloud end to end (DESIGN.md 3.4): a static pool of two existing hosts, kept up without
demand (min_nodes), running `autoScalingType: none` jobs, never scaled below min_nodes.

The two "hosts" are the test's sshd on 127.0.0.1 and 127.0.0.2 (tests/services.py sshd_server),
each with its own node root under tmp_path; the service reaches them with the cloud's SSH key
(credentials `ssh_private_key`), configures them with playbooks/node.yml and runs real agents.
The local cloud is disabled: the pool is the only place jobs can run.
"""
import json
import time

import pytest

from tests.images import busybox_image
from tests.jobs import describe, job, submit, wait_for
from tests.live import LiveServer
from tests.services import sshd_server
from tests.test_ec2_cloud import apply, cli, client, eventually, node_rows, stop_agents
from tests.test_ec2_failover import wait_reasons

pytestmark = pytest.mark.slow

HOST = {"cpus": 1, "memory_mb": 1024, "disk_gb": 5}  # the shape the pool's hosts declare
FLAVOUR = {"name": "1cpu-1024mb-5gb", **HOST, "price": 0}  # the driver's size id for that shape
NONE = {"policies": {"autoScalingType": "none"}}


@pytest.fixture
def sshd(tmp_path):
    with sshd_server(tmp_path / "sshd", addresses=["127.0.0.2"]) as server:
        yield server


@pytest.fixture
def server(tmp_path):
    busybox_image()
    server = LiveServer(tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}", provisioner=True)
    server.roots = [tmp_path / "host-a", tmp_path / "host-b"]
    try:  # a start that times out leaves its process running: stopped here all the same
        server.start()
        yield server
    finally:
        server.stop()
        for root in server.roots:
            stop_agents(root)
    assert "Traceback (most recent call last)" not in server.log.read_text(), server.log.read_text()[-6000:]


def pool_cloud(server, sshd, tmp_path) -> dict:
    hosts = [{"name": name, "address": address, "port": sshd.port, "user": "root", **HOST, "node_root": str(root)}
             for name, address, root in (("a", "127.0.0.1", server.roots[0]), ("b", "127.0.0.2", server.roots[1]))]
    return {"name": "pool", "provider": "ssh", "site": "pool", "region": "here",
            "driver_args": {"state_dir": str(tmp_path / "pool-state"), "hosts": hosts},
            "ssh_user": "root", "ssh_port": sshd.port, "install_packages": False, "flavours": [FLAVOUR],
            "min_nodes": 2, "max_instances": 2, "idle_timeout": 1, "configure_timeout": 120,
            "credentials": {"ssh_private_key": sshd.key_file.read_text()}}


def test_a_pool_of_two_hosts_runs_jobs_without_autoscaling_and_stays_up(server, sshd, tmp_path):
    apply(server, pool_cloud(server, sshd, tmp_path))

    # Both hosts become nodes without any job.
    ready = eventually(lambda: (rows := [n for n in node_rows(server.database_url) if n.state == "ready"])
                       and len(rows) == 2 and rows, 150, "both pool nodes are ready")
    assert sorted(n.address for n in ready) == ["127.0.0.1", "127.0.0.2"]
    assert {(n.cloud, n.flavour, n.cpus) for n in ready} == {("pool", FLAVOUR["name"], 1)}
    assert len(node_rows(server.database_url)) == 2
    pool = json.loads((tmp_path / "pool-state" / "pool.json").read_text())["nodes"]
    assert sorted(r["host"] for r in pool.values()) == ["a", "b"] and set(pool) == {n.name for n in ready}
    assert "BEGIN OPENSSH" not in (tmp_path / "pool-state" / "pool.json").read_text()

    with client(server) as api:
        ids = [submit(api, job(busybox_image(), {"cmd": f"echo pool {i}"}, **NONE)) for i in range(3)]
        for i, job_id in enumerate(ids):
            done = wait_for(api, job_id, timeout=90)
            assert done["status"] == "completed", done
            assert done["execution"]["site"] == "pool", done
            assert api.get(f"/jobs/{job_id}/stdout").text == f"pool {i}\n"

        # More cpus than any pool host. No enabled cloud can ever run it (the local cloud is
        # disabled): it fails at once, as a job no cloud can satisfy does.
        big = submit(api, job(busybox_image(), {"cmd": "echo big"}, cpus=2, **NONE))
        failed = wait_for(api, big, timeout=10)
        assert failed["status"] == "failed", failed
        assert failed["statusReason"].startswith("No matching resources"), failed

        # With an enabled cloud that has a flavour big enough (local, which may not autoscale for
        # this job, but whose nodes made for other jobs could take it), it waits, and says why.
        cli(server.data_dir, server.database_url, "cloud", "enable", "local")
        big = submit(api, job(busybox_image(), {"cmd": "echo big"}, cpus=2, **NONE))
        eventually(lambda: wait_reasons(server, big), 10, "the planner's reasons")
        waiting = describe(api, big)
        assert waiting["status"] == "idle", waiting
        assert waiting["statusReason"] == "Waiting for existing resources (autoScalingType none)", waiting
        assert wait_reasons(server, big) == {"pool": "no flavour big enough",
                                            "local": "only existing resources allowed"}
        time.sleep(2)
        assert describe(api, big)["status"] == "idle"
        assert api.delete(f"/jobs/{big}").status_code == 200
        cli(server.data_dir, server.database_url, "cloud", "disable", "local")

    # Idle far longer than the pool's idle_timeout (1 s): never deleted below min_nodes.
    time.sleep(4)
    rows = node_rows(server.database_url)
    assert [(n.name, n.state) for n in rows] == [(n.name, "ready") for n in ready], rows
    assert all(n.idle_since is not None for n in rows), rows
    listed = {c["name"]: c for c in json.loads(cli(server.data_dir, server.database_url, "cloud", "list", "--json"))}
    assert listed["pool"]["instances"] == 2 and listed["pool"]["health"] == 1
