"""GET /v1/resources and GET /v1/accounting (and GraphQL's `resources` and `accounting`), on SQLite
and PostgreSQL: nodes and jobs are inserted directly, and the numbers checked against ones
computed by hand; then the real PROMINENCE CLI's `resources` and `usage` against a live server.

The accounting data (all times from T0 = 2024-03-01 00:00 UTC; the window 2024-03-01..2024-03-02
is [T0, T0 + 48 h)):
- node N1: 4 cpus at 0.8/h, from T0 - 1 h to T0 + 10 h: 10 h in the window, 8.0
- node N2: 2 cpus at 0.3/h, from T0 + 40 h, still up: 8 h in the window, 2.4
- node N0: long gone before the window: 0
- alice J1 on N1: 2 cpus, T0 - 30 min to T0 + 2 h; tasks' cpu 3600 + 1800 s. cpu 1.5 h, wall
  2.5 h x 2 = 5 h; spend 2 h (in the window) x 2 cpus x 0.8 / 4 = 0.8
- alice J2 on N1: 1 cpu, T0 + 1 h to T0 + 5 h; cpu 720 s (other tasks without a number). cpu
  0.2 h, wall 4 h; spend 4 h x 1 x 0.2 = 0.8
- bob J3 on N1: 4 cpus, T0 + 6 h to T0 + 10 h; cpu 36000 s. cpu 10 h, wall 16 h; spend 3.2
- bob J4 on N2: 1 cpu, running since T0 + 42 h: not counted (not ended); spend 6 h x 0.15 = 0.9
- bob J5: ended exactly at T0 (counted), 600 s of 1 cpu: wall 1/6 h
- bob J6: ended exactly at T0 + 48 h: not counted
- bob J7: ended at T0 + 48 h - 1 s after 3600 s: counted, wall 1 h
- carol J8: deleted before it started (no start): not counted; J9: idle, given to N2: no spend
alice: 2 jobs, cpu 1.7, wall 9, spend 1.6; bob: 3 jobs, cpu 10, wall 17.1667, spend 4.1;
all nodes 10.4, attributed 5.7, idle 4.7.

The groups the jobs were submitted with (jobs.owner_groups): J1 physics; J2 physics and chem; J3
physics; J4 physics; J7 chem; the others none. physics: J1, J2, J3 (3 jobs, cpu 11.7, wall 25;
spend 0.8 + 0.8 + 3.2 + J4's 0.9 = 5.7); chem: J2, J7 (2 jobs, cpu 0.2, wall 5, spend 0.8).
"""
import calendar
import datetime as dt
import itertools
import subprocess
import time

import pytest
from gql.transport.exceptions import TransportQueryError
from sqlalchemy import insert

from gateway.services.clouds import CloudService
from schema.credentials import CredentialBox
from schema.db import make_engine
from schema.tables import jobs, nodes
from tests.conftest import REPO
from tests.live import LiveServer
from tests.test_cli import PROMINENCE, Cli
from tests.test_graphql import client, request

T0 = calendar.timegm(dt.date(2024, 3, 1).timetuple())
H = 3600
_ids = itertools.count(10**6)


def add_node(engine, cloud: str, state: str = "ready", **values) -> int:
    row = {"cloud": cloud, "name": f"test-{cloud}-{time.monotonic_ns()}", "state": state, "cpus": 2,
           "memory_mb": 4096, "disk_gb": 20, "site": "", "info": {}, "created_at": time.time() - H,
           "flavour": "m1", "price": 0.0, "address": "10.0.0.7", **values}
    with engine.begin() as connection:
        return connection.execute(insert(nodes).values(**row)).inserted_primary_key[0]


def add_job(engine, owner: str, status: str, cpus: int = 1, memory_mb: int = 1000, node_id: int | None = None,
            start: float | None = None, end: float | None = None, tasks: list | None = None,
            groups: list[str] | None = None) -> int:
    job_id = next(_ids)
    row = {"id": job_id, "owner": owner, "name": "", "status": status, "status_reason": "",
           "spec": {"resources": {"cpus": cpus, "memory": 1}, "tasks": [{"image": "busybox"}]},
           "workflow_id": None, "in_queue": status in ("idle", "running"), "create_time": int(start or T0) - 60,
           "start_time": None if start is None else int(start), "end_time": None if end is None else int(end),
           "execution": {} if tasks is None else {"tasks": tasks}, "node_id": node_id, "attempt": 1, "retries": 0,
           "priority": 0, "cpus": cpus, "memory_mb": memory_mb, "disk_gb": 10, "nodes": 1, "autoscale": True,
           **({} if groups is None else {"owner_groups": groups})}
    with engine.begin() as connection:
        connection.execute(insert(jobs).values(**row))
    return job_id


def add_cloud(engine, tmp_path, name: str, **fields) -> None:
    doc = {"name": name, "provider": "ec2", "region": "eu-west-1",
           "flavours": [{"name": "m1", "cpus": 2, "memory_mb": 4096, "disk_gb": 20, "price": 0.05}], **fields}
    CloudService(engine, CredentialBox.for_data_dir(tmp_path)).add(doc)


def accounting_data(engine) -> None:
    n1 = add_node(engine, "aws", "deleted", cpus=4, memory_mb=8192, price=0.8, created_at=T0 - H, ended_at=T0 + 10 * H)
    n2 = add_node(engine, "aws", "ready", cpus=2, memory_mb=4096, price=0.3, created_at=T0 + 40 * H)
    n0 = add_node(engine, "aws", "deleted", price=5.0, created_at=T0 - 10 * 24 * H, ended_at=T0 - 9 * 24 * H)
    add_job(engine, "alice", "completed", 2, node_id=n1, start=T0 - 1800, end=T0 + 2 * H,
            tasks=[{"cpuTimeUsage": 3600, "exitCode": 0}, {"cpuTimeUsage": 1800.0}], groups=["physics"])
    add_job(engine, "alice", "failed", 1, node_id=n1, start=T0 + H, end=T0 + 5 * H,
            tasks=[{"cpuTimeUsage": 720}, {"exitCode": 1}, {"cpuTimeUsage": "12"}, "junk", 7],
            groups=["physics", "chem"])
    add_job(engine, "bob", "killed", 4, node_id=n1, start=T0 + 6 * H, end=T0 + 10 * H, tasks=[{"cpuTimeUsage": 36000}],
            groups=["physics"])
    add_job(engine, "bob", "running", 1, node_id=n2, start=T0 + 42 * H, groups=["physics"])
    add_job(engine, "bob", "completed", 1, start=T0 - 600, end=T0)
    add_job(engine, "bob", "completed", 1, start=T0 + 47 * H, end=T0 + 48 * H, tasks=[{"cpuTimeUsage": 99999}],
            groups=["physics"])
    add_job(engine, "bob", "completed", 1, start=T0 + 48 * H - 1 - H, end=T0 + 48 * H - 1, groups=["chem"])
    add_job(engine, "carol", "deleted", 1, end=T0 + H)
    add_job(engine, "carol", "idle", 1, node_id=n2)
    add_job(engine, "erin", "completed", 1, node_id=n0, start=T0 - 10 * 24 * H, end=T0 - 9 * 24 * H - 60)


ALICE = {"numberOfJobs": 2, "cpuTime": 1.7, "wallTime": 9.0, "cloudSpend": 1.6}
BOB = {"numberOfJobs": 3, "cpuTime": 10.0, "wallTime": 17.166667, "cloudSpend": 4.1}
ZERO = {"numberOfJobs": 0, "cpuTime": 0.0, "wallTime": 0.0, "cloudSpend": 0.0}
PHYSICS = {"numberOfJobs": 3, "cpuTime": 11.7, "wallTime": 25.0, "cloudSpend": 5.7}
CHEM = {"numberOfJobs": 2, "cpuTime": 0.2, "wallTime": 5.0, "cloudSpend": 0.8}


def engine_of(api):
    return api.client.app.state.engine


def usage(api, user="alice", admin=False, groups=(), **params):
    response = api.client.get("/v1/accounting", params=params, headers=api.headers(user, admin=admin, groups=groups))
    assert response.status_code == 200, response.text
    return response.json()["usage"]


def approx(entries: dict) -> dict:
    return {name: {k: pytest.approx(v, abs=1e-5) for k, v in entry.items()} for name, entry in entries.items()}


# -- resources ------------------------------------------------------------------------------------

def test_resources_are_the_ready_nodes_by_site_minus_their_jobs(api, tmp_path):
    engine = engine_of(api)
    assert api.request("GET", "/resources").json() == {"existing": [], "potential": []}
    add_cloud(engine, tmp_path, "aws", site="siteA", max_instances=6, max_cpus=12)
    add_cloud(engine, tmp_path, "os", site="", max_memory_mb=10 * 1024 + 500)
    add_cloud(engine, tmp_path, "off", enabled=False, site="siteC")
    add_cloud(engine, tmp_path, "open")  # no quota at all
    a = add_node(engine, "aws", cpus=4, memory_mb=8192, site="siteA")
    add_node(engine, "aws", cpus=2, memory_mb=4096, site="siteA")
    c = add_node(engine, "os", cpus=8, memory_mb=16384)  # its cloud has no site: the cloud's name
    add_node(engine, "aws", "creating", cpus=2, site="siteA")  # booting: not existing, but uses quota
    add_node(engine, "aws", "draining", cpus=2, site="siteA")  # takes no new jobs
    add_node(engine, "aws", "deleted", cpus=16, site="siteA", ended_at=time.time())
    add_job(engine, "alice", "running", 2, 3000, node_id=a, start=time.time())
    add_job(engine, "bob", "idle", 1, 1000, node_id=a)  # given to it, not started yet: counts
    add_job(engine, "bob", "completed", 2, 1000, node_id=a, start=T0, end=T0 + 1)  # done: frees
    add_job(engine, "bob", "running", 8, 20000, node_id=c, start=time.time())  # over its memory: free is 0
    add_job(engine, "bob", "idle", 4, 4000)  # waiting, on no node

    found = api.request("GET", "/resources").json()
    assert found["existing"] == [
        {"site": "siteA", "nodes": 2, "capacity": {"cpus": 6, "memory": 12}, "free": {"cpus": 3, "memory": 8}},
        {"site": "os", "nodes": 1, "capacity": {"cpus": 8, "memory": 16}, "free": {"cpus": 0, "memory": 0}},
    ]
    # aws: 4 live nodes (10 cpus, 16 GB) of 6 and 12 cpus: 2 more nodes, 2 cpus, 2 x 4 GB at most;
    # os: 10.5 GB of memory quota, 16 used: nothing left; open: no limit.
    assert found["potential"] == [
        {"cloud": "aws", "site": "siteA", "instances": 2, "cpus": 2, "memory": 8},
        {"cloud": "open", "site": "open", "instances": None, "cpus": None, "memory": None},
        {"cloud": "os", "site": "os", "instances": None, "cpus": None, "memory": 0},
    ]
    assert api.request("GET", "/resources", user="bob").json() == found  # the same for everyone
    assert api.request("GET", "/resources", user=None).status_code == 401


# -- accounting -----------------------------------------------------------------------------------

def test_accounting_numbers_per_user(api):
    accounting_data(engine_of(api))
    window = {"start": "2024-03-01", "end": "2024-03-02"}
    assert usage(api, "alice", **window) == approx({"users": {"alice": ALICE}})
    assert usage(api, "bob", **window) == approx({"users": {"bob": BOB}})
    assert usage(api, "carol", **window) == {"users": {"carol": ZERO}}  # always there, zero without jobs
    everyone = usage(api, "dave", admin=True, show_all_users="true", **window)
    assert everyone["users"] == approx({"alice": ALICE, "bob": BOB})
    assert everyone["spend"] == pytest.approx({"total": 10.4, "attributed": 5.7, "idle": 4.7}, abs=1e-5)
    assert usage(api, "dave", admin=True, **window) == {"users": {"dave": ZERO}}  # an admin's own, by default
    assert usage(api, "dave", admin=True, show_all_users="false", **window) == {"users": {"dave": ZERO}}


def test_accounting_window_edges(api):
    accounting_data(engine_of(api))
    # One day, [T0, T0 + 24 h): bob's J5 (ended at T0) and J3; not J7 (the next day).
    day1 = usage(api, "dave", admin=True, show_all_users="true", start="2024-03-01", end="2024-03-01")
    assert day1["users"] == approx({
        "alice": ALICE, "bob": {"numberOfJobs": 2, "cpuTime": 10.0, "wallTime": 16 + 1 / 6, "cloudSpend": 3.2}})
    assert day1["spend"] == pytest.approx({"total": 8.0, "attributed": 4.8, "idle": 3.2}, abs=1e-5)
    # The second day: J7 (ended a second before its end) and J4's 6 h on N2 (running since T0 + 42 h).
    day2 = usage(api, "dave", admin=True, show_all_users="true", start="2024-03-02", end="2024-03-02")
    assert day2["users"] == approx({"bob": {"numberOfJobs": 1, "cpuTime": 0.0, "wallTime": 1.0, "cloudSpend": 0.9}})
    assert day2["spend"] == pytest.approx({"total": 2.4, "attributed": 0.9, "idle": 1.5}, abs=1e-5)
    # The day before: bob's J5 ended at T0 exactly, which is the next day's; N1's first hour.
    before = usage(api, "dave", admin=True, show_all_users="true", start="2024-02-29", end="2024-02-29")
    assert before["users"] == approx({"alice": {**ZERO, "cloudSpend": 0.5 * 2 * 0.2}})  # J1's first half hour
    assert before["spend"] == pytest.approx({"total": 0.8, "attributed": 0.2, "idle": 0.6}, abs=1e-5)
    # A year without anything.
    assert usage(api, "dave", admin=True, show_all_users="true", start="2023-01-01", end="2023-12-31") == {
        "users": {}, "spend": {"total": 0.0, "attributed": 0.0, "idle": 0.0}}
    # erin's job, ten days earlier, on N0 (2 cpus at 5.0/h): 1 cpu for 24 h - 60 s.
    early = usage(api, "erin", start="2024-02-19", end="2024-02-21")
    assert early == approx({"users": {"erin": {"numberOfJobs": 1, "cpuTime": 0.0, "wallTime": (24 * H - 60) / H,
                                               "cloudSpend": 2.5 * (24 * H - 60) / H}}})
    # All of time: J1 also held N1 for its half hour before T0.
    assert usage(api, "alice", start="0001-01-01", end="9999-12-31") == approx(
        {"users": {"alice": {**ALICE, "cloudSpend": 1.8}}})


def test_accounting_permissions(api):
    accounting_data(engine_of(api))
    window = {"start": "2024-03-01", "end": "2024-03-02"}
    assert api.client.get("/v1/accounting", params=window).status_code == 401
    # Without groups, "all users in the group" is the caller alone; nobody else's jobs are shown.
    assert usage(api, "alice", show_all_users="true", **window) == approx({"users": {"alice": ALICE}})
    assert usage(api, "alice", by_group="true", **window) == approx({"users": {"alice": ALICE}, "groups": {}})
    assert usage(api, "alice", by_group="false", **window) == approx({"users": {"alice": ALICE}})
    # A token's groups give nothing of a group it does not hold, whatever the others ran in it.
    assert usage(api, "erin", groups=("bio",), show_all_users="true", by_group="true", **window) == {
        "users": {"erin": ZERO}, "groups": {"bio": ZERO}}


def test_accounting_by_group(api):
    """A job counts in each group it was submitted with, whoever's; a member's `show_all_users`
    shows the users whose jobs were submitted with one of the caller's groups, those jobs only."""
    accounting_data(engine_of(api))
    window = {"start": "2024-03-01", "end": "2024-03-02"}
    # carol ran nothing; her groups' usage is their members' jobs.
    assert usage(api, "carol", groups=("physics",), by_group="true", **window) == approx(
        {"users": {"carol": ZERO}, "groups": {"physics": PHYSICS}})
    assert usage(api, "carol", groups=("physics", "chem", "physics"), by_group="true", **window) == approx(
        {"users": {"carol": ZERO}, "groups": {"chem": CHEM, "physics": PHYSICS}})
    # The members of alice's groups: bob's jobs in physics (J3; J4's spend), or in chem (J7), only;
    # alice's own entry is all of hers.
    in_physics = usage(api, "alice", groups=("physics",), show_all_users="true", **window)
    assert in_physics == approx({"users": {"alice": ALICE, "bob": {"numberOfJobs": 1, "cpuTime": 10.0,
                                                                  "wallTime": 16.0, "cloudSpend": 4.1}}})
    in_chem = usage(api, "alice", groups=("chem",), show_all_users="true", by_group="true", **window)
    assert in_chem == approx({"users": {"alice": ALICE, "bob": {"numberOfJobs": 1, "cpuTime": 0.0, "wallTime": 1.0,
                                                               "cloudSpend": 0.0}},
                              "groups": {"chem": CHEM}})
    assert "spend" not in in_chem  # all nodes' spend: admins only
    both = usage(api, "carol", groups=("physics", "chem"), show_all_users="true", **window)
    assert both == approx({"users": {"alice": ALICE, "bob": {"numberOfJobs": 2, "cpuTime": 10.0, "wallTime": 17.0,
                                                             "cloudSpend": 4.1}, "carol": ZERO}})
    # An admin: every group with jobs in the window (with all users), else the admin's own groups.
    everything = usage(api, "dave", admin=True, groups=("bio",), show_all_users="true", by_group="true", **window)
    assert everything["users"] == approx({"alice": ALICE, "bob": BOB})
    assert everything["groups"] == approx({"chem": CHEM, "physics": PHYSICS})
    assert everything["spend"] == pytest.approx({"total": 10.4, "attributed": 5.7, "idle": 4.7}, abs=1e-5)
    assert usage(api, "dave", admin=True, groups=("bio",), by_group="true", **window) == {
        "users": {"dave": ZERO}, "groups": {"bio": ZERO}}
    # The window applies: the second day has J7 (chem) and J4's spend (physics) only.
    day2 = usage(api, "dave", admin=True, show_all_users="true", by_group="true", start="2024-03-02", end="2024-03-02")
    assert day2["groups"] == approx({"chem": {"numberOfJobs": 1, "cpuTime": 0.0, "wallTime": 1.0, "cloudSpend": 0.0},
                                     "physics": {**ZERO, "cloudSpend": 0.9}})


@pytest.mark.parametrize("params, message", [
    ({}, "Start date must be provided"),
    ({"end": "2024-03-01"}, "Start date must be provided"),
    ({"start": "", "end": "2024-03-01"}, "Start date must be provided"),
    ({"start": "2024-03-01"}, "End date must be provided"),
    ({"start": "2024-03-01", "end": ""}, "End date must be provided"),
    ({"start": "2024-3-1", "end": "2024-03-01"}, "start must be a date in the form YYYY-MM-DD"),
    ({"start": "20240301", "end": "2024-03-01"}, "start must be a date in the form YYYY-MM-DD"),
    ({"start": "2024-02-30", "end": "2024-03-01"}, "start must be a date in the form YYYY-MM-DD"),
    ({"start": "2024-03-01T00:00", "end": "2024-03-01"}, "start must be a date in the form YYYY-MM-DD"),
    ({"start": "２０２４-03-01", "end": "2024-03-01"}, "start must be a date in the form YYYY-MM-DD"),
    ({"start": "2024-03-01\x00", "end": "2024-03-01"}, "start must be a date in the form YYYY-MM-DD"),
    ({"start": "2024-03-01", "end": "2024-13-01"}, "end must be a date in the form YYYY-MM-DD"),
    ({"start": "2024-03-01", "end": "\x00"}, "end must be a date in the form YYYY-MM-DD"),
    ({"start": "2024-03-01", "end": " 2024-03-02"}, "end must be a date in the form YYYY-MM-DD"),
    ({"start": "2024-03-02", "end": "2024-03-01"}, "end must not be before start"),
])
def test_accounting_bad_input(api, params, message):
    response = api.client.get("/v1/accounting", params=params, headers=api.headers("alice"))
    assert response.status_code == 400 and response.json() == {"error": message}


# -- GraphQL and the real CLI against a live server --------------------------------------------------

@pytest.fixture
def live(tmp_path, database_url):
    with LiveServer(tmp_path / "data", database_url) as server:
        engine = make_engine(database_url)
        try:
            yield server, engine
        finally:
            engine.dispose()


ACCOUNTING = """query ($start: Date!, $end: Date!, $all: Boolean!) {
    accounting(start: $start, end: $end, allUsers: $all) {
        start end users { user numberOfJobs cpuTime wallTime cloudSpend } spend { total attributed idle } } }"""
BY_GROUP = """query ($start: Date!, $end: Date!, $all: Boolean!) {
    accounting(start: $start, end: $end, allUsers: $all, byGroup: true) {
        users { user numberOfJobs } groups { group numberOfJobs cpuTime wallTime cloudSpend } spend { total } } }"""
RESOURCES = """{ resources { existing { site nodes capacity { cpus memory } free { cpus memory } }
                             potential { cloud site instances cpus memory } } }"""


def test_graphql_resources_and_accounting(live, tmp_path):
    server, engine = live
    accounting_data(engine)
    add_cloud(engine, tmp_path, "aws", site="siteA", max_instances=3)
    alice, admin = client(server, server.token("alice")), client(server, server.token("dave", "--admin"))

    found = alice.execute(request(RESOURCES))["resources"]
    # N2 has bob's running J4 (1 cpu, 1000 MB) and carol's idle J9 given to it (1 cpu, 1000 MB).
    assert found["existing"] == [{"site": "aws", "nodes": 1, "capacity": {"cpus": 2, "memory": 4},
                                  "free": {"cpus": 0, "memory": 2}}]
    assert found["potential"] == [{"cloud": "aws", "site": "siteA", "instances": 2, "cpus": 4, "memory": 8}]

    mine = alice.execute(request(ACCOUNTING, start="2024-03-01", end="2024-03-02", all=False))["accounting"]
    assert mine["start"] == "2024-03-01" and mine["end"] == "2024-03-02" and mine["spend"] is None
    assert mine["users"] == [{"user": "alice", **approx({"a": ALICE})["a"]}]
    everyone = admin.execute(request(ACCOUNTING, start="2024-03-01", end="2024-03-02", all=True))["accounting"]
    assert everyone["users"] == [{"user": "alice", **approx({"a": ALICE})["a"]},
                                 {"user": "bob", **approx({"b": BOB})["b"]}]
    assert everyone["spend"] == pytest.approx({"total": 10.4, "attributed": 5.7, "idle": 4.7}, abs=1e-5)

    def error(query, who=alice, **variables):
        with pytest.raises(TransportQueryError) as raised:
            who.execute(request(query, **variables))
        [problem] = raised.value.errors
        return problem.get("extensions", {}).get("code"), problem["message"]

    # allUsers for a member of no group: the caller alone, without the nodes' spend
    alone = alice.execute(request(ACCOUNTING, start="2024-03-01", end="2024-03-02", all=True))["accounting"]
    assert alone["users"] == [{"user": "alice", **approx({"a": ALICE})["a"]}] and alone["spend"] is None
    carol = client(server, server.token("carol", "--group", "physics", "--group", "chem"))
    grouped = carol.execute(request(BY_GROUP, start="2024-03-01", end="2024-03-02", all=True))["accounting"]
    assert grouped["users"] == [{"user": "alice", "numberOfJobs": 2}, {"user": "bob", "numberOfJobs": 2},
                                {"user": "carol", "numberOfJobs": 0}]
    assert grouped["groups"] == [{"group": "chem", **approx({"c": CHEM})["c"]},
                                 {"group": "physics", **approx({"p": PHYSICS})["p"]}] and grouped["spend"] is None
    assert alice.execute(request(BY_GROUP, start="2024-03-01", end="2024-03-02", all=False))["accounting"][
        "groups"] == []
    every = admin.execute(request(BY_GROUP, start="2024-03-01", end="2024-03-02", all=True))["accounting"]
    assert [g["group"] for g in every["groups"]] == ["chem", "physics"] and every["spend"] is not None
    assert error(ACCOUNTING, start="2024-03-02", end="2024-03-01", all=False) == (
        "BAD_USER_INPUT", "end must not be before start")
    for bad in ("2024-02-30", "2024-03-01\x00", "yesterday", ""):  # the Date scalar refuses them
        assert error(ACCOUNTING, start=bad, end="2024-03-01", all=False)[1].startswith(
            "Variable '$start' has invalid value: Value cannot represent a Date")
    assert error(RESOURCES, who=client(server, None))[0] == "UNAUTHENTICATED"


def run_cli(server, user: str, *args: str, admin: bool = False, home=None,
            groups: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cli = Cli(server, home, user)
    if admin or groups:
        cli.env["PROMINENCE_TOKEN"] = server.token(user, *(["--admin"] if admin else []),
                                                   *(f for g in groups for f in ("--group", g)))
    return subprocess.run([str(PROMINENCE), *args], env=cli.env, capture_output=True, text=True, timeout=60,
                          cwd=REPO, check=False)


def test_the_cli_resources_and_usage(live, tmp_path):
    server, engine = live
    accounting_data(engine)
    add_node(engine, "aws", cpus=8, memory_mb=32768, site="siteB")
    home = tmp_path / "home"

    shown = run_cli(server, "alice", "resources", home=home)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:4] == ["Existing resources", "", "Total           Free", "Cpus  Memory    Cpus  Memory    Site"]
    # By free cpus: siteB (8 free) first, then N2 (no site: its cloud's name) with 0.
    assert [line.split() for line in lines[4:6]] == [["8", "32", "8", "32", "siteB"], ["2", "4", "0", "2", "aws"]]

    mine = run_cli(server, "alice", "usage", "2024-03-01", "2024-03-02", home=home)
    assert mine.returncode == 0, mine.stdout + mine.stderr
    assert mine.stdout.splitlines() == ["alice", "   Number of jobs             2", "   CPU time (CPU hours)       1",
                                        "   Wall time (CPU hours)      9"]
    everyone = run_cli(server, "dave", "usage", "--all", "2024-03-01", "2024-03-02", admin=True, home=home)
    assert everyone.returncode == 0, everyone.stdout + everyone.stderr
    assert everyone.stdout.splitlines() == [
        "alice", "   Number of jobs             2", "   CPU time (CPU hours)       1",
        "   Wall time (CPU hours)      9",
        "bob", "   Number of jobs             3", "   CPU time (CPU hours)       10",
        "   Wall time (CPU hours)      17"]

    # `usage --group` (by_group=true): the caller's groups after the users; `--all`: the members of
    # the caller's groups, their jobs in them.
    grouped = run_cli(server, "carol", "usage", "--group", "2024-03-01", "2024-03-02", home=home,
                      groups=("physics", "chem"))
    assert grouped.returncode == 0, grouped.stdout + grouped.stderr
    assert grouped.stdout.splitlines() == [
        "carol", "   Number of jobs             0", "   CPU time (CPU hours)       0",
        "   Wall time (CPU hours)      0",
        "chem", "   Number of jobs             2", "   CPU time (CPU hours)       0",
        "   Wall time (CPU hours)      5",
        "physics", "   Number of jobs             3", "   CPU time (CPU hours)       11",
        "   Wall time (CPU hours)      25"]
    members = run_cli(server, "alice", "usage", "--all", "--group", "2024-03-01", "2024-03-02", home=home,
                      groups=("chem",))
    assert members.returncode == 0, members.stdout + members.stderr
    assert members.stdout.splitlines() == [
        "alice", "   Number of jobs             2", "   CPU time (CPU hours)       1",
        "   Wall time (CPU hours)      9",
        "bob", "   Number of jobs             1", "   CPU time (CPU hours)       0",
        "   Wall time (CPU hours)      1",
        "chem", "   Number of jobs             2", "   CPU time (CPU hours)       0",
        "   Wall time (CPU hours)      5"]
    alone = run_cli(server, "alice", "usage", "--all", "2024-03-01", "2024-03-02", home=home)
    assert alone.returncode == 0 and alone.stdout.splitlines() == mine.stdout.splitlines(), alone.stdout

    refusals = ((("2024-03-02", "2024-03-01"), "end must not be before start"),
                (("yesterday", "2024-03-01"), "start must be a date in the form YYYY-MM-DD"))
    for args, message in refusals:
        refused = run_cli(server, "alice", "usage", *args, home=home)
        assert refused.returncode == 1 and refused.stdout.strip() == f"Error: {message}", refused.stdout


def test_rows_from_before_have_no_groups(database_url):
    """Migration 0010: jobs and workflows stored before it record no groups (an empty list: they
    count in no group, and may name no group's objects); jobs(end_time) is indexed."""
    import sqlalchemy as sa

    from schema.db import upgrade
    from tests.test_migrations import upgrade_to

    engine = make_engine(database_url)
    try:
        upgrade_to(engine, "0009")
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.begin() as connection:
            connection.execute(metadata.tables["jobs"].insert().values(
                id=1, owner="alice", name="", status="completed", status_reason="", spec={"tasks": []},
                in_queue=False, create_time=T0, start_time=T0, end_time=T0 + H, execution={}))
            connection.execute(metadata.tables["workflows"].insert().values(
                id=2, owner="alice", name="", status="completed", status_reason="", spec={"jobs": []}, state={},
                total=0, in_queue=False, create_time=T0))
        upgrade(engine)
        with engine.connect() as connection:
            assert connection.execute(sa.select(jobs.c.owner_groups)).scalars().all() == [[]]
            assert connection.execute(sa.text("SELECT owner_groups FROM workflows")).scalar_one() in ([], "[]")
        assert "ix_jobs_end_time" in {index["name"] for index in sa.inspect(engine).get_indexes("jobs")}
    finally:
        engine.dispose()
