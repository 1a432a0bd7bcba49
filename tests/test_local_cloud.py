"""The `local` cloud for real: the libcloud driver, playbooks/node.yml over ansible_connection=local,
and a stand-in agent process (the real agent is tested on its own)."""

import json
import os
import stat
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from libcloud.compute.base import NodeSize
from libcloud.compute.providers import get_driver

from provisioner.configure import configure_node
from provisioner.drivers import LocalNodeDriver, register
from provisioner.drivers.local import machine_cpus, process_alive

STAND_IN = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    config = sys.argv[sys.argv.index("--config") + 1]
    child = subprocess.Popen(["sleep", "300"])  # an agent has children (containers...)
    state = {"pid": os.getpid(), "child": child.pid, "config": config,
             "config_content": json.load(open(config)), "env": dict(os.environ)}
    with open(os.path.join(os.path.dirname(config), "standin.json.tmp"), "w") as f:
        json.dump(state, f)
    os.replace(os.path.join(os.path.dirname(config), "standin.json.tmp"),
               os.path.join(os.path.dirname(config), "standin.json"))
    print("stand-in agent started", flush=True)
    while True:
        time.sleep(1)
    """
)


@pytest.fixture
def agent_src(tmp_path) -> Path:
    src = tmp_path / "src" / "agent"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "__main__.py").write_text(STAND_IN)
    return src


@pytest.fixture
def driver(tmp_path):
    driver = register()(str(tmp_path / "nodes"))
    yield driver
    for node in driver.list_nodes():  # never leave agents behind, even when a test fails
        driver.destroy_node(node)


def size(cpus: int, ram: int) -> NodeSize:
    return NodeSize(id=f"want-{cpus}", name="", ram=ram, disk=None, bandwidth=None, price=0, driver=None,
                    extra={"cpus": cpus})


def standin_state(node_dir: Path, previous_pid: int | None = None, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = json.loads((node_dir / "standin.json").read_text())
            if state["pid"] != previous_pid:
                return state
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the stand-in agent did not start in {node_dir}")


def files_containing(text: str, roots: list[Path], since: float, exclude: Path) -> list[str]:
    hits = []
    needle = text.encode()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            if Path(dirpath) == exclude or exclude in Path(dirpath).parents:
                dirnames[:] = []
                continue
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime < since or st.st_size > 20_000_000:
                        continue
                    with open(path, "rb") as f:
                        if needle in f.read():
                            hits.append(path)
                except OSError:
                    continue
    return hits


def test_register_is_idempotent_and_get_driver_returns_the_class():
    assert register() is LocalNodeDriver
    assert register() is LocalNodeDriver
    assert get_driver("local") is LocalNodeDriver


def test_catalogue_comes_from_this_machine(driver):
    sizes = driver.list_sizes()
    assert [s.id for s in sizes] == [f"local-{c}cpu" for c in range(1, machine_cpus() + 1)]
    assert all(s.price == 0 and s.ram > 0 and s.disk > 0 for s in sizes)
    assert sizes[-1].extra["cpus"] == machine_cpus()
    assert [i.id for i in driver.list_images()] == ["local"]
    assert [loc.id for loc in driver.list_locations()] == ["local"]
    with pytest.raises(ValueError, match="cpus"):
        driver.create_node("too-big", size(machine_cpus() + 1, 100), driver.list_images()[0])
    with pytest.raises(ValueError, match="name"):
        driver.create_node("../escape", size(1, 100), driver.list_images()[0])


def test_nodes_live_in_directories_and_survive_a_new_driver(driver, tmp_path):
    node = driver.create_node("node-a", driver.list_sizes()[0], driver.list_images()[0],
                              ex_metadata={"service": "svc-1", "cloud": "local"})
    node_dir = tmp_path / "nodes" / "node-a"
    record = json.loads((node_dir / "node.json").read_text())
    assert record["id"] == "node-a" and record["tags"] == {"service": "svc-1", "cloud": "local"}
    assert node.state == "running" and node.private_ips == ["127.0.0.1"]
    assert node.extra["dir"] == str(node_dir) and node.extra["cpus"] == 1
    with pytest.raises(FileExistsError):
        driver.create_node("node-a", driver.list_sizes()[0], driver.list_images()[0])

    again = LocalNodeDriver(str(tmp_path / "nodes"))  # a restarted service
    [seen] = again.list_nodes()
    assert seen.id == "node-a" and seen.extra["tags"]["service"] == "svc-1"
    assert again.destroy_node(seen) is True
    assert not node_dir.exists() and driver.list_nodes() == []


@pytest.mark.slow
def test_configure_a_local_node_then_destroy_it(driver, agent_src, tmp_path, monkeypatch, run_dirs):
    token = f"node-token-{uuid.uuid4().hex}"
    monkeypatch.setenv("PROMINENCE_TEST_SERVER_SECRET", "server-secret-" + uuid.uuid4().hex)
    node = driver.create_node("node-b", size(2, 1024), driver.list_images()[0], ex_metadata={"service": "svc-2"})
    node_dir = Path(node.extra["dir"])
    config = {"url": "http://127.0.0.1:8080/agent/v1", "node": node.id, "token": token, "cpus": 2}
    since = time.time() - 1

    result = configure_node("127.0.0.1", str(node_dir), config, agent_src)
    print(f"first configure: {result.duration:.1f} s")
    assert result.ok, result.error
    assert result.rc == 0 and result.error is None

    state = standin_state(node_dir)
    pid = state["pid"]
    assert process_alive(pid) and process_alive(state["child"])
    assert int((node_dir / "agent.pid").read_text()) == pid
    assert state["config"] == str(node_dir / "agent.json") and state["config_content"] == config
    assert stat.S_IMODE((node_dir / "agent.json").stat().st_mode) == 0o600
    assert json.loads((node_dir / "agent.json").read_text()) == config
    assert state["env"]["CONTAINERS_CONF"] == str(node_dir / "containers.conf")
    # the agent gets a clean environment: neither the server's secrets nor ansible's
    assert "PROMINENCE_TEST_SERVER_SECRET" not in state["env"]
    assert not any(k.startswith("ANSIBLE") for k in state["env"])

    # no secret left on disk by the run: its private data dir is gone, and no new file under
    # /tmp (outside the node dir), nor ansible's files in HOME, holds the token
    assert list(run_dirs.iterdir()) == []
    home = Path.home()
    assert files_containing(token, [Path("/tmp"), home / ".ansible", home / ".ansible_async"], since,
                            exclude=node_dir) == []

    # idempotent: same inputs leave the agent alone ...
    again = configure_node("127.0.0.1", str(node_dir), config, agent_src)
    print(f"second configure: {again.duration:.1f} s")
    assert again.ok, again.error
    assert int((node_dir / "agent.pid").read_text()) == pid and process_alive(pid)

    # ... a new config restarts it cleanly (old agent and its children gone)
    config2 = {**config, "token": token + "-2"}
    third = configure_node("127.0.0.1", str(node_dir), config2, agent_src)
    print(f"third configure: {third.duration:.1f} s")
    assert third.ok, third.error
    state2 = standin_state(node_dir, previous_pid=pid)
    assert state2["config_content"] == config2 and process_alive(state2["pid"])
    assert not process_alive(pid) and not process_alive(state["child"])

    [listed] = driver.list_nodes()
    assert listed.extra["agent_pid"] == state2["pid"] and listed.extra["tags"] == {"service": "svc-2"}

    assert driver.destroy_node(listed) is True
    assert not process_alive(state2["pid"]) and not process_alive(state2["child"])
    assert not node_dir.exists()
    assert driver.list_nodes() == []


def test_a_failing_run_says_which_task_failed_and_why(driver, tmp_path):
    node = driver.create_node("node-c", size(1, 256), driver.list_images()[0])
    result = configure_node("127.0.0.1", node.extra["dir"], {"token": "t-" + uuid.uuid4().hex},
                            tmp_path / "no-such-agent")
    print(f"failed configure: {result.duration:.1f} s")
    assert not result.ok and result.status == "error"
    assert result.error.startswith("no agent package") and "no-such-agent" in result.error
