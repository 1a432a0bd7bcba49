import http.server
import io
import itertools
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from schema.identity import TokenAuthority
from gateway.settings import Settings
from tests.services import create_database, postgres_server, remote_host

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_base_url():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A new, empty database of each kind the service supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return create_database(request.getfixturevalue("postgres_base_url"), f"test_{next(_databases)}")


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings.load(data_dir=str(tmp_path / "data"), database_url=database_url, run_provisioner=False)


class Api:
    """A test client of the /v1 API that can act as any user."""

    def __init__(self, client: TestClient, settings: Settings):
        self.client = client
        self.settings = settings
        self.tokens = TokenAuthority(settings.secret)

    def token(self, user: str = "alice", **claims) -> str:
        return self.tokens.issue(user, **claims)

    def headers(self, user: str = "alice", **claims) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, **claims)}"}

    def request(self, method: str, path: str, user: str | None = "alice", **kwargs):
        headers = kwargs.pop("headers", {})
        if user is not None:
            headers = {**self.headers(user), **headers}
        return self.client.request(method, "/v1" + path, headers=headers, **kwargs)

    def submit(self, spec: dict | None = None, user: str = "alice") -> int:
        response = self.request("POST", "/jobs", user, json=spec or simple_job())
        assert response.status_code == 201, response.text
        return response.json()["id"]


def simple_job(**extra) -> dict:
    return {"resources": {"nodes": 1, "disk": 10, "cpus": 1, "memory": 1}, "name": "",
            "tasks": [{"image": "busybox", "runtime": "singularity"}], **extra}


@pytest.fixture
def api(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(client, settings)


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def web(tmp_path):
    """A real HTTP server on loopback serving files from a directory."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def remote(tmp_path):
    """A host elsewhere on the network (its own network namespace) serving files over HTTP."""
    root = tmp_path / "remote"
    root.mkdir()
    with remote_host(root) as host:
        yield host


def tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def run_dirs(monkeypatch):
    """Where this test's ansible runs make their private data dirs (a short path: ssh's control
    sockets live there), to check that none is left, whatever other processes do in /tmp."""
    path = Path(tempfile.mkdtemp(prefix="pp-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)
