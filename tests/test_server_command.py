"""`prominence-server`: tokens, settings, and a database that keeps its data across upgrades."""
import subprocess
import sys
import time

import jwt
from sqlalchemy import inspect, text
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from schema.db import MIGRATIONS, make_engine, upgrade
from tests.conftest import REPO, simple_job


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=REPO, capture_output=True, text=True)


def test_token_create_prints_a_jwt_with_the_requested_claims(tmp_path):
    out = run_cli("token", "create", "--user", "carol", "--group", "physics", "--group", "ml",
                  "--email", "carol@example.org", "--admin", "--days", "2", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    secret = (tmp_path / "secret.key").read_text().strip()
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert claims["preferred_username"] == claims["sub"] == "carol"
    assert claims["groups"] == ["physics", "ml"]
    assert claims["email"] == "carol@example.org"
    assert claims["admin"] is True
    assert abs(claims["exp"] - (time.time() + 2 * 86400)) < 60
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


def test_token_create_rejects_bad_arguments(tmp_path):
    assert run_cli("token", "create", "--data-dir", str(tmp_path)).returncode == 2  # --user is required
    # The same rules as GraphQL's createToken: the field named, one line, nothing printed.
    for args, message in ((["--user", "u", "--days", "0"], "days: must be more than 0"),
                          (["--user", "a b"], "username: must be 1 to 128 letters"),
                          (["--user", "u", "--group", ""], "groups[0]: must be"),
                          (["--user", "u", "--email", "nope"], "email: must be an e-mail address")):
        out = run_cli("token", "create", *args, "--data-dir", str(tmp_path))
        assert out.returncode != 0 and message in out.stderr and not out.stdout, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_database_url_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMINENCE_DATABASE_URL", "postgresql+psycopg://u@db.example/p")
    assert Settings.load(data_dir=str(tmp_path)).database_url == "postgresql+psycopg://u@db.example/p"
    assert Settings.load(data_dir=str(tmp_path), database_url="sqlite:///x.db").database_url == "sqlite:///x.db"
    monkeypatch.delenv("PROMINENCE_DATABASE_URL")
    assert Settings.load(data_dir=str(tmp_path)).database_url == f"sqlite:///{tmp_path / 'prominence.db'}"


def test_migrations_create_the_schema_and_a_restart_keeps_every_job(settings):
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {client.app.state.tokens.issue('alice')}"}
        ids = [client.post("/v1/jobs", json=simple_job(name=f"n{i}"), headers=headers).json()["id"]
               for i in range(3)]
    engine = make_engine(settings.database_url)
    upgrade(engine)  # running the migrations again changes nothing
    with engine.connect() as connection:
        newest = sorted(path.name[:4] for path in (MIGRATIONS / "versions").glob("[0-9]*.py"))[-1]
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == newest
    assert {"jobs", "id_counter", "alembic_version"} <= set(inspect(engine).get_table_names())
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {client.app.state.tokens.issue('alice')}"}
        jobs = client.get("/v1/jobs", headers=headers).json()
        assert [(j["id"], j["name"]) for j in jobs] == [(i, f"n{n}") for n, i in enumerate(ids)]
        new = client.post("/v1/jobs", json=simple_job(), headers=headers).json()["id"]
        assert new == ids[-1] + 1
