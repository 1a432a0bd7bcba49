"""The real PROMINENCE CLI (prominence==0.21.0) against a live server, on SQLite and PostgreSQL.

Every assertion is on what a user sees in the CLI's output: the messages, the ids, and the
names and statuses in the tables it prints.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.live import LiveServer

PROMINENCE = REPO / ".venv" / "bin" / "prominence"


class Cli:
    """Runs `prominence ...` as a user would, pointed at one server with one user's token."""

    def __init__(self, server: LiveServer, home: Path, user: str = "alice"):
        home.mkdir(exist_ok=True)  # an empty HOME: no ~/.prominence/token can interfere
        self.env = {**os.environ, "HOME": str(home), "PROMINENCE_URL": f"{server.url}/v1",
                    "PROMINENCE_TOKEN": server.token(user)}

    def __call__(self, *args: str) -> str:
        done = subprocess.run([str(PROMINENCE), *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"prominence {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        return done.stdout

    def create(self, *args: str) -> int:
        out = self("create", *args).strip()
        assert out.startswith("Job created with id "), out
        return int(out.removeprefix("Job created with id "))

    def table(self, *args: str) -> dict[int, dict[str, str]]:
        """The rows of the table `prominence list ...` prints, by job id, as {column: text}."""
        return parse_table(self("list", *args))


def parse_table(out: str) -> dict[int, dict[str, str]]:
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and lines[0].split()[:2] == ["ID", "NAME"], out
    header = lines[0]
    names = header.split()
    starts = [header.index(name) for name in names]
    rows = {}
    for line in lines[1:]:
        cells = [line[start:end].strip() for start, end in zip(starts, starts[1:] + [None])]
        row = dict(zip(names, cells))
        rows[int(row["ID"])] = row
    return rows


@pytest.fixture
def cli(tmp_path, database_url):
    server = LiveServer(tmp_path / "data", database_url).start()
    try:
        yield Cli(server, tmp_path / "home")
    finally:
        server.stop()


def test_create_and_describe(cli):
    """`create` answers `Job created with id N`; `describe N` shows what was submitted, idle."""
    job = cli.create("--cpus", "1", "--memory", "1", "--name", "n1", "--label", "k=v", "busybox", "echo hi")
    second = cli.create("--name", "n2", "busybox")
    assert second > job

    described = json.loads(cli("describe", str(job)))
    assert described["id"] == job
    assert described["name"] == "n1"
    assert described["status"] == "idle"
    assert described["labels"] == {"k": "v"}
    assert described["resources"]["cpus"] == 1
    assert described["resources"]["memory"] == 1
    assert described["resources"]["nodes"] == 1
    assert [(t["image"], t.get("cmd")) for t in described["tasks"]] == [("busybox", "echo hi")]
    assert isinstance(described["events"]["createTime"], str)  # the CLI formats the epoch as a date


def test_list_and_filters(cli):
    """`list` shows active jobs; `--constraint k=v` and `--name n1` show only the matching job."""
    labelled = cli.create("--cpus", "1", "--memory", "1", "--name", "n1", "--label", "k=v", "busybox", "echo hi")
    other = cli.create("--name", "n2", "--label", "k=w", "busybox", "echo other")
    plain = cli.create("busybox")

    rows = cli.table()
    assert set(rows) == {labelled, other, plain}
    assert rows[labelled]["NAME"] == "n1"
    assert rows[labelled]["STATUS"] == "idle"
    assert rows[labelled]["IMAGE"] == "busybox"
    assert rows[labelled]["CMD"] == "echo hi"
    assert rows[other]["NAME"] == "n2"

    assert set(cli.table("--constraint", "k=v")) == {labelled}
    assert set(cli.table("--constraint", "k=w")) == {other}
    assert set(cli.table("--name", "n1")) == {labelled}
    assert set(cli.table("--name", "n1", "--constraint", "k=v")) == {labelled}
    assert cli.table("--name", "n1", "--constraint", "k=w") == {}
    assert cli.table("--constraint", "nosuch=label") == {}


def test_delete_then_completed_and_all(cli):
    """`delete N` prints Success; the job leaves `list`, shows as deleted in `--completed` and `--all`."""
    doomed = cli.create("--name", "doomed", "busybox", "sleep 1")
    kept = cli.create("--name", "kept", "busybox", "sleep 2")
    assert cli.table("--completed") == {}

    assert cli("delete", str(doomed)).strip() == "Success"

    assert set(cli.table()) == {kept}
    completed = cli.table("--completed")
    assert set(completed) == {doomed}
    assert completed[doomed]["NAME"] == "doomed"
    assert completed[doomed]["STATUS"] == "deleted"
    everything = cli.table("--all")
    assert {job: row["STATUS"] for job, row in everything.items()} == {doomed: "deleted", kept: "idle"}
    assert json.loads(cli("describe", str(doomed)))["status"] == "deleted"


def test_clone(cli):
    """`clone N` makes a new job with a new id and the same name, resources and tasks."""
    original = cli.create("--cpus", "2", "--memory", "3", "--name", "orig", "--label", "k=v",
                          "--env", "GREETING=hello", "busybox", "echo $GREETING")
    out = cli("clone", str(original)).strip()
    assert out.startswith("Job created with id "), out
    clone = int(out.removeprefix("Job created with id "))
    assert clone != original

    rows = cli.table()
    assert set(rows) == {original, clone}
    assert rows[clone]["NAME"] == "orig"
    assert rows[clone]["STATUS"] == "idle"
    assert rows[clone]["CMD"] == rows[original]["CMD"]

    first, second = (json.loads(cli("describe", str(job))) for job in (original, clone))
    assert second["tasks"] == first["tasks"]
    assert first["tasks"][0]["env"] == {"GREETING": "hello"}
    assert second["resources"] == first["resources"]
    assert second["labels"] == first["labels"] == {"k": "v"}
    assert second["status"] == "idle"
