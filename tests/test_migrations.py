"""Upgrading a database made by the first release: its jobs survive every migration and the service
uses them (real Alembic, real SQLite and PostgreSQL)."""
import time

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from starlette.testclient import TestClient

from gateway.app import create_app
from schema.db import MIGRATIONS, make_engine, upgrade
from schema.jobspec import JobSpec
from schema.tables import jobs
from tests.conftest import Api

NOW = int(time.time())


def upgrade_to(engine: sa.Engine, revision: str) -> None:
    """What schema.db.upgrade does, stopping at `revision`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def stored(**description) -> dict:
    """A description as the first release stored it: normalized by JobSpec, as the API does."""
    return JobSpec.model_validate({"tasks": [{"image": "busybox", "cmd": "echo hi"}], **description}).to_stored()


# The jobs table of revision 0001, as the first release wrote it (the statuses it could hold).
FIRST_RELEASE_JOBS = [
    {"id": 1, "owner": "alice", "name": "small", "status": "idle", "status_reason": "Waiting for resources",
     "spec": stored(name="small", resources={"cpus": 1, "memory": 1, "disk": 10, "nodes": 1},
                    labels={"project": "migrate"}),
     "in_queue": True, "create_time": NOW - 600, "execution": {}},
    {"id": 2, "owner": "alice", "name": "big", "status": "idle", "status_reason": "Waiting for resources",
     "spec": stored(name="big", resources={"cpus": 4, "memory": 8, "disk": 20, "nodes": 1},
                    policies={"priority": 5, "maximumTimeInQueue": 60}),
     "in_queue": True, "create_time": NOW - 500, "execution": {}},
    {"id": 3, "owner": "alice", "name": "existing-only", "status": "idle", "status_reason": "Waiting for resources",
     "spec": stored(name="existing-only", resources={"cpus": 2, "memory": 2, "disk": 10, "nodes": 1},
                    policies={"autoScalingType": "none"}),
     "in_queue": True, "create_time": NOW - 400, "execution": {}},
    {"id": 4, "owner": "alice", "name": "removed", "status": "deleted", "status_reason": "Job deleted by user",
     "spec": stored(name="removed", resources={"cpus": 1, "memory": 1, "disk": 10, "nodes": 1}),
     "in_queue": False, "create_time": NOW - 300, "end_time": NOW - 250, "execution": {}},
    {"id": 5, "owner": "alice", "name": "kept", "status": "completed", "status_reason": "",
     "spec": stored(name="kept", resources={"cpus": 1, "memory": 1, "disk": 10, "nodes": 1},
                    policies={"leaveInQueue": True}),
     "in_queue": True, "create_time": NOW - 200, "start_time": NOW - 190, "end_time": NOW - 180,
     "execution": {"site": "local", "tasks": [{"exitCode": 0, "wallTimeUsage": 1.5}]}},
    {"id": 6, "owner": "bob", "name": "broken", "status": "failed", "status_reason": "Artifact download failed",
     "spec": stored(name="broken", resources={"cpus": 1, "memory": 1, "disk": 10, "nodes": 1}),
     "in_queue": False, "create_time": NOW - 100, "start_time": NOW - 90, "end_time": NOW - 80,
     "execution": {"stageInError": "404"}},
]


@pytest.fixture
def first_release_database(database_url):
    """A database at revision 0001 holding FIRST_RELEASE_JOBS, upgraded by the service's own code."""
    engine = make_engine(database_url)
    upgrade_to(engine, "0001")
    metadata = sa.MetaData()
    metadata.reflect(engine)
    with engine.begin() as connection:
        connection.execute(metadata.tables["jobs"].insert(),
                           [{"workflow_id": None, "start_time": None, "end_time": None, **job}
                            for job in FIRST_RELEASE_JOBS])
        connection.execute(metadata.tables["id_counter"].update().values(value=len(FIRST_RELEASE_JOBS)))
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def api_on_old_database(first_release_database, settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(client, settings)


def test_the_first_release_jobs_are_listed_and_described_after_the_upgrade(api_on_old_database):
    api = api_on_old_database
    listed = api.request("GET", "/jobs").json()
    assert [(j["id"], j["name"], j["status"]) for j in listed] == [
        (1, "small", "idle"), (2, "big", "idle"), (3, "existing-only", "idle"), (5, "kept", "completed")]
    assert [j["id"] for j in api.request("GET", "/jobs?completed=true&num=-1").json()] == [4, 5]
    assert [j["id"] for j in api.request("GET", "/jobs?constraint=project=migrate").json()] == [1]
    assert [j["id"] for j in api.request("GET", "/jobs?all=true", user="bob").json()] == [6]

    [big] = api.request("GET", "/jobs/2").json()
    assert big["resources"] == {"cpus": 4, "memory": 8, "disk": 20, "nodes": 1}
    assert big["policies"]["priority"] == 5
    assert big["tasks"] == FIRST_RELEASE_JOBS[1]["spec"]["tasks"]
    assert big["tasks"][0]["cmd"] == "echo hi"
    assert big["events"] == {"createTime": NOW - 500}
    [kept] = api.request("GET", "/jobs/5").json()
    assert kept["execution"]["tasks"] == [{"exitCode": 0, "wallTimeUsage": 1.5}]
    assert kept["events"] == {"createTime": NOW - 200, "startTime": NOW - 190, "endTime": NOW - 180}
    [broken] = api.request("GET", "/jobs/6", user="bob").json()
    assert (broken["status"], broken["statusReason"]) == ("failed", "Artifact download failed")


def test_the_first_release_jobs_can_be_deleted_and_new_ids_follow_the_old_ones(api_on_old_database):
    api = api_on_old_database
    assert api.request("DELETE", "/jobs/1").status_code == 200
    [deleted] = api.request("GET", "/jobs/1").json()
    assert (deleted["status"], deleted["statusReason"]) == ("deleted", "Job deleted by user")
    assert api.submit() == len(FIRST_RELEASE_JOBS) + 1


def test_the_scheduler_sees_the_first_release_jobs_as_described(first_release_database):
    with first_release_database.connect() as connection:
        rows = {row.id: row for row in connection.execute(
            sa.select(jobs.c.id, jobs.c.cpus, jobs.c.memory_mb, jobs.c.disk_gb, jobs.c.priority, jobs.c.autoscale,
                      jobs.c.queue_deadline).where(jobs.c.status == "idle"))}
    assert (rows[2].cpus, rows[2].memory_mb, rows[2].disk_gb, rows[2].priority) == (4, 8192, 20, 5)
    assert rows[2].queue_deadline == NOW - 500 + 3600
    assert (rows[3].cpus, rows[3].autoscale) == (2, False)
