"""The node agent gives up cleanly: run as the playbook runs it (`python3 -m agent --config X` from
provisioner/, stdlib only) against a real gateway, or against a closed port. It exits non-zero
with one log line that says why, never a traceback."""
import json
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import insert

from gateway.settings import Settings
from schema.db import make_engine
from schema.identity import TokenAuthority
from schema.tables import nodes
from tests.conftest import REPO
from tests.images import containers_conf
from tests.live import LiveServer
from tests.services import free_port

pytestmark = pytest.mark.timeout(60)

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def start_agent(tmp_path: Path, gateway: str, node_id: int, token: str, **options) -> tuple[subprocess.Popen, Path]:
    """The agent with the environment the playbook gives it; returns the process and its log."""
    config = {"gateway": gateway, "node_id": node_id, "node_name": f"prominence-agent-exit-{node_id}",
              "token": token, "work_dir": str(tmp_path / "work"), "cpus": 1, "memory_mb": 512, "disk_gb": 1,
              "containers_conf": containers_conf(), **options}
    (tmp_path / "agent.json").write_text(json.dumps(config))
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["python3", "-m", "agent", "--config", str(tmp_path / "agent.json")],
                                   cwd=REPO / "provisioner", stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                   env={"PATH": SYSTEM_PATH, "HOME": str(tmp_path), "LANG": "C.UTF-8",
                                        "PYTHONUNBUFFERED": "1", "CONTAINERS_CONF": containers_conf()})
    return process, log


def errors(log: Path) -> list[str]:
    text = log.read_text()
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if " ERROR " in line]


def add_node(server: LiveServer, state: str) -> tuple[int, str]:
    engine = make_engine(server.database_url)
    with engine.begin() as connection:
        node_id = connection.execute(insert(nodes).values(
            cloud="local", name=f"agent-exit-{state}", state=state, cpus=1, memory_mb=512, disk_gb=1, site="local",
            region="", info={}, created_at=time.time()).returning(nodes.c.id)).scalar_one()
    engine.dispose()
    return node_id, TokenAuthority(Settings.load(str(server.data_dir)).secret).issue_node_token(node_id)


def test_an_agent_that_cannot_reach_its_gateway_to_register_exits(tmp_path):
    agent, log = start_agent(tmp_path, f"http://127.0.0.1:{free_port()}", 1, "token", register_retries=2)
    assert agent.wait(timeout=30) == 1
    [line] = errors(log)
    assert "could not reach the gateway" in line and "Connection refused" in line


def test_an_agent_the_gateway_refuses_exits(tmp_path):
    with LiveServer(tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}") as server:
        node_id, token = add_node(server, "deleted")
        agent, log = start_agent(tmp_path, server.url, node_id, token)
        assert agent.wait(timeout=30) == 1
    [line] = errors(log)
    assert "did not register node" in line and "403" in line


def test_an_agent_that_loses_its_gateway_exits_after_the_gateway_timeout(tmp_path):
    gateway_timeout = 3
    with LiveServer(tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}") as server:
        node_id, token = add_node(server, "configuring")
        agent, log = start_agent(tmp_path, server.url, node_id, token, heartbeat_interval=0.5,
                                 gateway_timeout=gateway_timeout)
        deadline = time.monotonic() + 30
        while "registered as node" not in log.read_text():
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        server.kill()
        lost = time.monotonic()
        assert agent.wait(timeout=gateway_timeout + 15) == 1
    assert time.monotonic() - lost >= gateway_timeout - 0.5  # counted from its last heartbeat
    [line] = errors(log)
    assert "no answer from the gateway" in line and "exiting" in line
