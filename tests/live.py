"""A real `prominence-server serve` process, for tests and benchmarks that need one over HTTP."""
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent


class LiveServer:
    def __init__(self, data_dir: Path, database_url: str, port: int | None = None, provisioner: bool = False,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.data_dir = Path(data_dir)
        self.database_url = database_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = self.data_dir.parent / f"server-{self.port}.log"
        self.extra_args = (*extra_args, *(() if provisioner else ("--no-provisioner",)))
        self.env = dict(env or {})  # on top of the defaults, e.g. {"PROMINENCE_LOG_LEVEL": "info"}
        self.verify: bool | ssl.SSLContext = True  # how its health check verifies an https server

    def start(self, timeout: float = 30) -> "LiveServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PROMINENCE_LOG_LEVEL": "warning", **self.env}
        command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port),
                   "--data-dir", str(self.data_dir), "--database-url", self.database_url, *self.extra_args]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1, verify=self.verify).status_code == 204:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()  # not left running for the next tests
        raise RuntimeError(f"server did not become healthy in {timeout} s: {self.log.read_text()}")

    def token(self, user: str = "alice", *extra: str) -> str:
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "token", "create", "--user", user,
                              "--data-dir", str(self.data_dir), *extra],
                             cwd=REPO, check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def kill(self) -> None:
        """kill -9: the crash the service must survive without losing acknowledged jobs."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
