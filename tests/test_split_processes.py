"""`serve --no-provisioner` and `prominence-server provisioner` as two processes on one database
(DESIGN.md 2: run apart, for scale): without in-process signals, a job still runs."""
import subprocess
import sys
import time

import httpx
import pytest

from provisioner.drivers.local import LocalNodeDriver
from tests.conftest import REPO
from tests.images import busybox_image
from tests.live import LiveServer

pytestmark = pytest.mark.slow


def test_a_job_runs_with_gateway_and_provisioner_apart(tmp_path, database_url):
    image = busybox_image()
    with LiveServer(tmp_path / "data", database_url) as server:
        provisioner = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "provisioner", "--data-dir", str(server.data_dir),
             "--database-url", database_url, "--public-url", server.url, "--local-cpus", "1",
             "--local-memory-mb", "1024"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "provisioner.log", "wb"))
        try:
            headers = {"Authorization": f"Bearer {server.token()}"}
            spec = {"resources": {"cpus": 1, "memory": 0.25, "disk": 1},
                    "tasks": [{"image": image, "cmd": "echo apart"}]}
            job_id = httpx.post(f"{server.url}/v1/jobs", json=spec, headers=headers).json()["id"]
            deadline = time.monotonic() + 90
            while (job := httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=headers).json()[0])["status"] \
                    in ("idle", "running"):
                assert time.monotonic() < deadline, (job, (tmp_path / "provisioner.log").read_text())
                time.sleep(0.3)
            assert job["status"] == "completed", job
            assert httpx.get(f"{server.url}/v1/jobs/{job_id}/stdout", headers=headers).text == "apart\n"
        finally:
            provisioner.terminate()
            assert provisioner.wait(timeout=30) == 0
            driver = LocalNodeDriver(str(server.data_dir / "nodes"))
            for node in driver.list_nodes():
                driver.destroy_node(node)
