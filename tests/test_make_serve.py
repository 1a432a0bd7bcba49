"""`make serve`, then the PROMINENCE CLI exactly as the banner says: the quick start a user follows."""
import os
import re
import subprocess
import time

import httpx
import pytest

from provisioner.drivers.local import LocalNodeDriver
from tests.conftest import REPO
from tests.services import free_port

pytestmark = pytest.mark.slow


def test_make_serve_then_cli_create_stdout_describe(tmp_path):
    port, data = free_port(), tmp_path / "data"
    server = subprocess.Popen(["make", "--no-print-directory", "serve", f"PORT={port}", f"DATA={data}"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PROMINENCE_LOG_LEVEL": "warning"})
    try:
        banner = ""
        while "or:" not in banner:
            line = server.stdout.readline()
            assert line, f"make serve ended early: {banner}"
            banner += line
        command = re.search(r"or:\s+(.*)", banner).group(1)
        env_part, cli_part = command.split(" .venv/bin/prominence ")
        env = {**os.environ, "HOME": str(tmp_path), **dict(item.split("=", 1) for item in env_part.split())}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 204:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)

        def cli(*args: str) -> str:
            out = subprocess.run([str(REPO / ".venv/bin/prominence"), *args], env=env, capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            return out.stdout

        # The banner's own example: `create --cpus 1 --memory 1 busybox 'echo hello'`.
        assert "create --cpus 1 --memory 1 busybox 'echo hello'" in cli_part
        job_id = re.search(r"Job created with id (\d+)", cli("create", "--cpus", "1", "--memory", "1", "busybox",
                                                              "echo hello")).group(1)
        deadline = time.monotonic() + 120
        while '"status": "completed"' not in (described := cli("describe", job_id)):
            assert time.monotonic() < deadline, described
            assert '"status": "failed"' not in described, described
            time.sleep(0.5)
        assert '"exitCode": 0' in described
        assert cli("stdout", job_id).strip() == "hello"
    finally:
        server.terminate()
        server.wait(timeout=30)
        driver = LocalNodeDriver(str(data / "nodes"))
        for node in driver.list_nodes():
            driver.destroy_node(node)
