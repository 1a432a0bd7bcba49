"""The `ssh` cloud for real: SshPoolNodeDriver over a private sshd on 127.0.0.1 (tests/services.py).

Two "hosts" of the pool are the same sshd (127.0.0.1:<port>) with different node roots under
tmp_path; nodes are configured with playbooks/node.yml over SSH with the stand-in agent of
tests/test_configure_ssh.py, and destroyed with playbooks/stop.yml over SSH."""

import json
import logging
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from libcloud.common.types import LibcloudError
from libcloud.compute.providers import get_driver

from provisioner.configure import configure_node
from provisioner.drivers import SSH_PROVIDER, register
from provisioner.drivers.local import process_alive, stop_agent
from provisioner.drivers.ssh_pool import (
    NO_FREE_HOST,
    NoFreeHostError,
    SshPoolNodeDriver,
)
from tests.services import free_port
from tests.test_configure_ssh import (  # noqa: F401 - agent_src and sshd are fixtures
    agent_src,
    files_containing,
    ssh_sessions_end,
    sshd,
    standin_state,
)


def hosts(tmp_path: Path, port: int, shapes=((2, 4000, 20), (2, 4000, 20))) -> list[dict]:
    return [
        {"name": f"h{i}", "address": "127.0.0.1", "port": port, "user": "root", "cpus": cpus,
         "memory_mb": memory, "disk_gb": disk, "node_root": str(tmp_path / f"h{i}")}
        for i, (cpus, memory, disk) in enumerate(shapes, start=1)
    ]


@pytest.fixture
def key_text(sshd) -> str:
    return sshd.key_file.read_text()


@pytest.fixture
def pool(tmp_path, sshd, key_text):
    driver = SshPoolNodeDriver(str(tmp_path / "state"), key_text, hosts=hosts(tmp_path, sshd.port))
    yield driver
    for i in (1, 2):  # never leave a stand-in agent behind, even when a test fails
        root = tmp_path / f"h{i}"
        for node_dir in root.iterdir() if root.exists() else ():
            stop_agent(node_dir)


def test_registered_as_ssh_with_one_size_per_shape(tmp_path):
    register()
    register()
    assert SSH_PROVIDER == "ssh" and get_driver("ssh") is SshPoolNodeDriver
    assert get_driver("local").__name__ == "LocalNodeDriver"
    driver = get_driver("ssh")(str(tmp_path / "state"), None,
                               hosts=hosts(tmp_path, 22, [(2, 4000, 20), (4, 8000, 40), (2, 4000, 20)]))
    sizes = driver.list_sizes()
    assert [s.id for s in sizes] == ["2cpu-4000mb-20gb", "4cpu-8000mb-40gb"]
    assert [(s.ram, s.disk, s.extra, s.price) for s in sizes] == [(4000, 20, {"cpus": 2}, 0),
                                                                   (8000, 40, {"cpus": 4}, 0)]
    with pytest.raises(ValueError, match="no host has the size"):
        driver.create_node("n-x", type(sizes[0])("8cpu", "8cpu", 100, 1, None, 0, driver, extra={"cpus": 8}))
    with pytest.raises(ValueError, match="node_root"):
        SshPoolNodeDriver(str(tmp_path / "s2"), None, hosts=[{"name": "h", "address": "a", "cpus": 1,
                                                              "node_root": "/"}])


def test_one_node_per_host_then_no_free_host(tmp_path, key_text):
    state = tmp_path / "state"
    pool = SshPoolNodeDriver(str(state), key_text, hosts=hosts(tmp_path, 2222))
    size = pool.list_sizes()[0]
    a = pool.create_node("node-a", size, ex_metadata={"service": "svc-1", "cloud": "pool"})
    b = pool.create_node("node-b", size, ex_metadata={"service": "svc-1", "cloud": "pool"})
    assert {a.extra["host"], b.extra["host"]} == {"h1", "h2"}
    assert a.private_ips == ["127.0.0.1"] and a.extra["port"] == 2222 and a.extra["user"] == "root"
    assert a.extra["node_dir"] == f"{tmp_path}/{a.extra['host']}/node-a"
    assert a.state == "running"

    with pytest.raises(NoFreeHostError) as caught:
        pool.create_node("node-c", size, ex_metadata={"service": "svc-1"})
    assert isinstance(caught.value, LibcloudError)
    assert NO_FREE_HOST in str(caught.value) and "2cpu-4000mb-20gb" in str(caught.value)
    assert key_text.strip() not in str(caught.value) and key_text.strip() not in repr(caught.value)
    with pytest.raises(ValueError, match="exists already"):
        pool.create_node("node-a", size)

    # a restarted service (a new driver on the same state dir) finds the nodes and their tags
    again = SshPoolNodeDriver(str(state), key_text, hosts=hosts(tmp_path, 2222))
    listed = again.list_nodes()
    assert [n.name for n in listed] == ["node-a", "node-b"]
    assert all(n.extra["tags"] == {"service": "svc-1", "cloud": "pool"} for n in listed)
    assert [n.extra["node_dir"] for n in listed] == [a.extra["node_dir"], b.extra["node_dir"]]

    # the key is in no file of the state dir, nor in the driver's libcloud attributes or repr
    for path in state.iterdir():
        assert key_text.strip() not in path.read_text(), path
    record = json.loads((state / "pool.json").read_text())
    assert record["nodes"]["node-a"]["tags"] == {"service": "svc-1", "cloud": "pool"}
    assert stat.S_IMODE((state / "pool.json").stat().st_mode) == 0o600
    assert pool.secret is None and key_text.strip() not in repr(pool) + repr(vars(pool))


@pytest.mark.slow
def test_configure_destroy_then_the_host_is_free(pool, sshd, agent_src, key_text, run_dirs, caplog):
    caplog.set_level(logging.DEBUG)
    since = time.time() - 1
    size = pool.list_sizes()[0]
    node = pool.create_node("node-a", size, ex_metadata={"service": "svc-1"})
    pool.create_node("node-b", size)
    node_dir = Path(node.extra["node_dir"])

    config = {"url": "http://127.0.0.1:8080/agent/v1", "node": "node-a", "token": f"t-{uuid.uuid4().hex}"}
    result = configure_node(node.private_ips[0], str(node_dir), config, agent_src, connection="ssh",
                            ssh_user=node.extra["user"], ssh_key_file=str(sshd.key_file),
                            ssh_port=node.extra["port"])
    assert result.ok, result.error
    agent = standin_state(node_dir)
    assert process_alive(agent["pid"]) and process_alive(agent["child"])

    started = time.monotonic()
    assert pool.destroy_node(node) is True
    print(f"destroy over ssh: {time.monotonic() - started:.1f} s")
    assert not process_alive(agent["pid"]) and not process_alive(agent["child"])
    assert not node_dir.exists() and node_dir.parent.exists()
    assert [n.name for n in pool.list_nodes()] == ["node-b"]
    assert ssh_sessions_end(sshd)

    # the freed host takes a new node; none is left for a third
    node_c = pool.create_node("node-c", size)
    assert node_c.extra["host"] == node.extra["host"]
    with pytest.raises(NoFreeHostError):
        pool.create_node("node-d", size)
    # destroying a node already destroyed is a no-op
    assert pool.destroy_node(node) is True

    # the key: never in logs, nor in a file the runs left (only the sshd's own client key holds it)
    assert key_text.strip() not in caplog.text
    assert os.listdir(run_dirs) == []
    home = Path.home()
    assert files_containing(key_text.strip(), [Path("/tmp"), home / ".ansible", home / ".ansible_async"], since,
                            {sshd.key_file}) == []


@pytest.mark.slow
def test_destroying_a_stopped_or_unconfigured_node_succeeds(pool, tmp_path):
    size = pool.list_sizes()[0]
    stopped = pool.create_node("node-stopped", size)
    never = pool.create_node("node-never", size)  # created, never configured: no node dir at all
    node_dir = Path(stopped.extra["node_dir"])
    node_dir.mkdir(parents=True)
    (node_dir / "agent.json").write_text("{}")
    (node_dir / "sub").mkdir()
    (node_dir / "sub" / "file").write_text("x")
    # a job's filesystem is a mount below the node dir: detached, never emptied
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    (node_dir / "sub" / "fs").mkdir()
    mounted = subprocess.run(["mount", "--bind", str(outside), str(node_dir / "sub" / "fs")],
                             check=False, capture_output=True).returncode == 0
    # the agent is gone and its pid now belongs to another process: that one is left alone
    other = subprocess.Popen(["sleep", "60"])
    try:
        (node_dir / "agent.pid").write_text(str(other.pid))
        started = time.monotonic()
        assert pool.destroy_node(stopped) is True
        print(f"destroy of a stopped node: {time.monotonic() - started:.1f} s")
        assert not node_dir.exists()
        assert other.poll() is None
        assert (outside / "keep").read_text() == "keep"
        if mounted:
            assert str(node_dir) not in Path("/proc/self/mountinfo").read_text()
        else:
            print("no bind mount here (not permitted): the unmount step ran on nothing")
    finally:
        other.kill()
        other.wait()
        if mounted and (node_dir / "sub" / "fs").exists():
            subprocess.run(["umount", "-l", str(node_dir / "sub" / "fs")], check=False, capture_output=True)
    assert pool.destroy_node(never) is True
    assert pool.list_nodes() == []


@pytest.mark.slow
def test_a_failed_stop_raises_and_keeps_the_node(tmp_path, sshd, key_text, run_dirs, caplog):
    caplog.set_level(logging.DEBUG)
    pool = SshPoolNodeDriver(str(tmp_path / "state"), key_text, hosts=hosts(tmp_path, free_port())[:1])
    node = pool.create_node("node-a", pool.list_sizes()[0], ex_metadata={"service": "svc-1"})
    started = time.monotonic()
    with pytest.raises(LibcloudError) as caught:
        pool.destroy_node(node)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    print(f"unreachable host: {elapsed:.1f} s: {message}")
    assert elapsed < 30
    assert "could not stop node node-a on host h1" in message and "Connection refused" in message
    assert key_text.strip() not in message and key_text.strip() not in caplog.text
    for line in key_text.splitlines()[1:-1]:
        assert line not in message and line not in caplog.text
    # the record stays, for the provisioner's retry; the host is still taken
    assert [n.name for n in pool.list_nodes()] == ["node-a"]
    with pytest.raises(NoFreeHostError):
        pool.create_node("node-b", pool.list_sizes()[0])
    assert os.listdir(run_dirs) == []


def test_concurrent_creates_never_share_a_host(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    state = tmp_path / "state"
    pools = [SshPoolNodeDriver(str(state), None, hosts=hosts(tmp_path, 22)) for _ in range(2)]
    size = pools[0].list_sizes()[0]

    def create(i: int):
        try:
            return pools[i % 2].create_node(f"node-{i}", size).extra["host"]
        except NoFreeHostError:
            return None

    with ThreadPoolExecutor(8) as workers:
        taken = [h for h in workers.map(create, range(16)) if h]
    assert sorted(taken) == ["h1", "h2"]
    assert sorted(n.extra["host"] for n in pools[1].list_nodes()) == ["h1", "h2"]
