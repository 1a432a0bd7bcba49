"""playbooks/node.yml over SSH for real: a private sshd on 127.0.0.1 (tests/services.py), the node
directory on this machine, and a stand-in agent process (the real agent is tested on its own)."""

import json
import os
import stat
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from provisioner.configure import configure_node
from provisioner.drivers.local import process_alive, stop_agent
from tests.services import sshd_server

STAND_IN = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    config = sys.argv[sys.argv.index("--config") + 1]
    child = subprocess.Popen(["sleep", "300"])  # an agent has children (containers...)
    state = {"pid": os.getpid(), "child": child.pid, "config": config, "ppid": os.getppid(),
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
def sshd(tmp_path):
    with sshd_server(tmp_path / "sshd") as server:
        yield server


@pytest.fixture
def node_dir(tmp_path):
    path = tmp_path / "node"
    yield path
    stop_agent(path)  # never leave the stand-in behind, even when the test fails


def standin_state(node_dir: Path, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads((node_dir / "standin.json").read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"the stand-in agent did not start in {node_dir}")


def ssh_sessions_end(sshd, timeout: float = 5) -> bool:
    """True once the listening sshd has no session processes (children) left."""
    listener = sshd.pid_file.read_text().split()[0]
    deadline = time.monotonic() + timeout
    while True:
        children = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1] == listener:
                    children.append(entry)
            except (OSError, IndexError):
                continue
        if not children:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def files_containing(text: str, roots: list[Path], since: float, allowed: set[Path]) -> list[str]:
    """Regular files under ``roots`` modified since ``since`` that contain ``text``, except ``allowed``."""
    hits, needle = [], text.encode()
    for root in roots:
        for dirpath, _dirnames, filenames in os.walk(root, onerror=lambda e: None):
            for name in filenames:
                path = Path(dirpath) / name
                if path in allowed:
                    continue
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime < since or st.st_size > 20_000_000:
                        continue
                    if needle in path.read_bytes():
                        hits.append(str(path))
                except OSError:
                    continue
    return hits


@pytest.mark.slow
def test_configure_a_node_over_ssh(sshd, agent_src, node_dir, monkeypatch, run_dirs):
    token = f"node-token-{uuid.uuid4().hex}"
    monkeypatch.setenv("PROMINENCE_TEST_SERVER_SECRET", "server-secret-" + uuid.uuid4().hex)
    config = {"url": "http://127.0.0.1:8080/agent/v1", "node": "node-ssh", "token": token, "cpus": 1}
    since = time.time() - 1

    result = configure_node(sshd.host, str(node_dir), config, agent_src, connection="ssh",
                            ssh_user=sshd.user, ssh_key_file=str(sshd.key_file), ssh_port=sshd.port)
    print(f"configure over ssh: {result.duration:.1f} s")
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
    assert "PROMINENCE_TEST_SERVER_SECRET" not in state["env"]
    assert not any(k.startswith(("ANSIBLE", "SSH_")) for k in state["env"])

    # the run's ssh connections end with it (ansible's ControlPersist masters are closed, so no
    # sshd session is left on the node), and the agent outlives the session that started it
    assert ssh_sessions_end(sshd), "sshd sessions left open after the run"
    assert process_alive(pid) and process_alive(state["child"])

    # no secret left on disk by the run: the private data dir is gone, and no file under /tmp nor
    # ansible's remote files in HOME holds the token, except agent.json (and the stand-in's own
    # record of what it read)
    assert list(run_dirs.iterdir()) == []
    home = Path.home()
    allowed = {node_dir / "agent.json", node_dir / "standin.json"}
    assert files_containing(token, [Path("/tmp"), home / ".ansible", home / ".ansible_async"], since,
                            allowed) == []

    # idempotent over SSH too: the same inputs leave the agent alone
    again = configure_node(sshd.host, str(node_dir), config, agent_src, connection="ssh",
                           ssh_user=sshd.user, ssh_key_file=str(sshd.key_file), ssh_port=sshd.port)
    print(f"second configure over ssh: {again.duration:.1f} s")
    assert again.ok, again.error
    assert int((node_dir / "agent.pid").read_text()) == pid and process_alive(pid)

    assert stop_agent(node_dir)
    assert not process_alive(pid) and not process_alive(state["child"])


@pytest.mark.slow
@pytest.mark.parametrize("wrong", ["key", "port"])
def test_an_unreachable_node_fails_quickly_and_says_why(sshd, agent_src, node_dir, tmp_path, wrong):
    key, port = sshd.key_file, sshd.port
    if wrong == "key":
        key = tmp_path / "sshd" / "host_ed25519"  # a valid key that is not authorised
    else:
        from tests.services import free_port

        port = free_port()  # nothing listens there
    started = time.monotonic()
    result = configure_node(sshd.host, str(node_dir), {"token": "t-" + uuid.uuid4().hex}, agent_src,
                            connection="ssh", ssh_user=sshd.user, ssh_key_file=str(key), ssh_port=port,
                            timeout=120)
    elapsed = time.monotonic() - started
    print(f"unreachable ({wrong}): {result.status} after {elapsed:.1f} s: {result.error}")
    assert elapsed < 30
    assert result.status == "failed" and result.rc not in (0, None)
    assert result.error.startswith("Find the service manager: ")  # the first task that connects
    assert "ssh" in result.error and "known hosts" not in result.error
    assert ("Permission denied (publickey)" if wrong == "key" else "Connection refused") in result.error
    assert ssh_sessions_end(sshd)
    assert not node_dir.exists()
