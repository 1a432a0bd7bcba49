"""Failing clouds for real (DESIGN.md 3.4): two EC2 cloud records on one moto, each behind its own
Ec2Proxy (tests/services.py), so that faults hit one cloud only.

"cheap" has the lower prices, so the planner ranks it first; the proxy in front of it fails or
delays RunInstances. "dear" works. What is checked is what a user and an admin see: the job
completes on the cloud that works, the failing cloud gets exactly the calls the rules allow (1 +
2 retries for an API error, 1 for a quota error), sits in the penalty box, its failed nodes say
why, and jobs that wait say why (overall in statusReason, per cloud in the jobs table's
wait_reasons). Helpers and fixtures come from tests/test_ec2_cloud.py (the passing base case).
"""
import dataclasses
import json
import time
import uuid

import pytest
from sqlalchemy import select

from schema.db import make_engine
from schema.tables import jobs
from tests.images import busybox_image
from tests.jobs import describe, job, submit, wait_for
from tests.live import LiveServer
from tests.services import Ec2Proxy, prepare_ec2_world
from tests.test_ec2_cloud import (  # noqa: F401 - moto, proxy and sshd are fixtures
    FLAVOURS,
    apply,
    cli,
    client,
    ec2_cloud,
    eventually,
    moto,
    node_rows,
    proxy,
    sshd,
    stop_agents,
)

pytestmark = pytest.mark.slow

# Same flavours as "dear" (tests/test_ec2_cloud.FLAVOURS), at lower prices.
CHEAP_FLAVOURS = [{**f, "price": round(f["price"] / 2, 4)} for f in FLAVOURS]


def tracebacks(text: str) -> list[str]:
    return [part[:2000] for part in text.split("Traceback (most recent call last)")[1:]]


@pytest.fixture
def server(tmp_path):
    """A server with its provisioner; its agents are stopped and its log has no traceback."""
    busybox_image()
    server = LiveServer(tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}", provisioner=True,
                        extra_args=("--reconcile-interval", "3"))
    server.node_root = tmp_path / "ec2-nodes"
    try:
        server.start()
        yield server
    finally:
        server.stop()
        stop_agents(server.node_root)
    assert not tracebacks(server.log.read_text()), server.log.read_text()[-6000:]


@pytest.fixture
def dear_proxy(moto):
    with Ec2Proxy(moto) as proxy:
        yield proxy


def two_clouds(server, cheap_proxy, dear_proxy, sshd, cheap=None, dear=None):
    """cheap (through cheap_proxy) and dear (through dear_proxy): one moto, one VPC and subnet."""
    world = prepare_ec2_world(cheap_proxy.url)
    dear_world = dataclasses.replace(world, url=dear_proxy.url)
    apply(server, ec2_cloud("cheap", world, sshd, server.node_root, flavours=CHEAP_FLAVOURS, **(cheap or {})),
          ec2_cloud("dear", dear_world, sshd, server.node_root, **(dear or {})))
    return world


def clouds_listed(server) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(cli(server.data_dir, server.database_url, "cloud", "list", "--json"))}


def nodes_listed(server, cloud: str) -> list[dict]:
    return json.loads(cli(server.data_dir, server.database_url, "node", "list", "--all", "--json", "--cloud", cloud))


def wait_reasons(server, job_id: int) -> dict | None:
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(jobs.c.wait_reasons).where(jobs.c.id == job_id)).scalar_one()
    finally:
        engine.dispose()


def tagged_instances(world) -> dict[str, str]:
    """name -> state of every instance in moto that carries a service tag."""
    return {i.name: i.state for i in world.driver().list_nodes() if "prominence-service" in i.extra.get("tags", {})}


def test_a_failing_cloud_is_retried_twice_then_penalised_and_jobs_fail_over(server, proxy, dear_proxy, sshd):
    cheap = proxy
    two_clouds(server, cheap, dear_proxy, sshd)
    cheap.fail("RunInstances", "InternalError", "An internal error has occurred", status=500)
    with client(server) as api:
        first = submit(api, job(busybox_image(), {"cmd": "echo first"}))
        # 1 + 2 retries on cheap, then it is in the penalty box and the launch moves on to dear.
        eventually(lambda: nodes_listed(server, "dear"), 60, "a node on dear")
        assert cheap.count("RunInstances") == 3
        listed = clouds_listed(server)
        assert listed["cheap"]["penalty_until"] and listed["cheap"]["penalty_until"] > time.time() + 600
        assert listed["cheap"]["health"] < 1
        assert listed["dear"]["penalty_until"] is None and listed["dear"]["health"] == 1
        failed = nodes_listed(server, "cheap")
        assert [n["state"] for n in failed] == ["failed"] * 3, failed
        for node in failed:
            assert node["state_reason"].startswith("Infrastructure deployment failed: create: "), node
            assert "InternalError" in node["state_reason"] and "internal error" in node["state_reason"], node

        # While cheap sits in the penalty box, a job that needs a new VM (2 cpus: the t3.small
        # flavour, which no node has) goes straight to dear: no new RunInstances on cheap.
        second = submit(api, job(busybox_image(), {"cmd": "echo second"}, cpus=2))
        for job_id, text in ((first, "first\n"), (second, "second\n")):
            done = wait_for(api, job_id, timeout=150)
            assert done["status"] == "completed", done
            assert api.get(f"/jobs/{job_id}/stdout").text == text
        assert cheap.count("RunInstances") == 3
        assert dear_proxy.count("RunInstances") >= 2

    # One VM per job on dear: no tick planned another VM for the first job while its launch
    # moved from one failed attempt to the next.
    rows = node_rows(server.database_url)
    dear = [n for n in rows if n.cloud == "dear"]
    assert sorted((n.flavour, n.state) for n in dear) == [("t2.micro", "ready"), ("t3.small", "ready")], rows
    assert clouds_listed(server)["cheap"]["penalty_until"] is not None


def test_a_quota_error_skips_the_cloud_at_once(server, proxy, dear_proxy, sshd):
    cheap = proxy
    two_clouds(server, cheap, dear_proxy, sshd)
    cheap.fail("RunInstances", "InstanceLimitExceeded",
               "You have requested more instances (1) than your current instance limit of 0 allows", status=400)
    with client(server) as api:
        job_id = submit(api, job(busybox_image(), {"cmd": "echo over quota"}))
        done = wait_for(api, job_id, timeout=120)
        assert done["status"] == "completed", done
        assert api.get(f"/jobs/{job_id}/stdout").text == "over quota\n"
    assert cheap.count("RunInstances") == 1
    [failed] = nodes_listed(server, "cheap")
    assert failed["state"] == "failed" and "InstanceLimitExceeded" in failed["state_reason"], failed
    listed = clouds_listed(server)
    assert listed["cheap"]["penalty_until"] is None and listed["cheap"]["health"] < 1
    [dear] = [n for n in node_rows(server.database_url) if n.cloud == "dear"]  # one VM for one job
    assert dear.state == "ready"


def test_a_cloud_error_that_quotes_the_credentials_is_shown_redacted(server, proxy, dear_proxy, sshd):
    """An API error whose text holds the cloud's secret: the node's reason, `node list`, `cloud
    list` and the server's log show it redacted."""
    secret = f"wJalrXUtnFEMI-{uuid.uuid4().hex}"
    world = prepare_ec2_world(proxy.url)
    apply(server, ec2_cloud("cheap", dataclasses.replace(world, secret=secret), sshd, server.node_root,
                            flavours=CHEAP_FLAVOURS),
          ec2_cloud("dear", dataclasses.replace(world, url=dear_proxy.url), sshd, server.node_root))
    proxy.fail("RunInstances", "AuthFailure", f"The secret {secret} does not match", status=401)
    with client(server) as api:
        done = wait_for(api, submit(api, job(busybox_image(), {"cmd": "true"})), timeout=120)
        assert done["status"] == "completed", done
    failed = nodes_listed(server, "cheap")
    assert failed and all("AuthFailure: The secret *** does not match" in n["state_reason"] for n in failed), failed
    shown = cli(server.data_dir, server.database_url, "node", "list", "--all") + \
        cli(server.data_dir, server.database_url, "cloud", "list", "--json") + \
        cli(server.data_dir, server.database_url, "cloud", "show", "cheap")
    assert secret not in shown and secret not in server.log.read_text()


def test_a_create_call_that_does_not_answer_is_given_up_and_its_late_instance_destroyed(
        server, proxy, dear_proxy, sshd):
    """RunInstances on cheap answers after 10 s; cheap's create_timeout is 2 s. Each attempt is
    given up after ~2 s (1 + 2 retries, then the penalty box), the launch fails over to dear, and
    the instances moto creates late (tagged, their nodes failed) are destroyed by the provisioner's
    reconcile step (every 3 s here: --reconcile-interval). dear's instance, which cheap's listing shows too (one
    EC2 account and region), is left alone."""
    cheap = proxy
    world = two_clouds(server, cheap, dear_proxy, sshd, cheap={"create_timeout": 2})
    cheap.delay("RunInstances", 10)
    with client(server) as api:
        started = time.monotonic()
        job_id = submit(api, job(busybox_image(), {"cmd": "echo late"}))
        eventually(lambda: nodes_listed(server, "dear"), 30, "a node on dear")
        failover = time.monotonic() - started
        assert cheap.count("RunInstances") == 3
        assert 5.5 <= failover < 25, failover
        failed = nodes_listed(server, "cheap")
        assert [n["state"] for n in failed] == ["failed"] * 3, failed
        for node in failed:
            assert node["state_reason"] == "Infrastructure deployment failed: create: no answer within 2 s", node
        late = {n["name"] for n in failed}

        # moto creates the late instances ~10 s after each call; the reconcile destroys them.
        eventually(lambda: late <= set(tagged_instances(world)), 30, "the late instances appear in moto")
        done = wait_for(api, job_id, timeout=120)
        assert done["status"] == "completed", done
        assert api.get(f"/jobs/{job_id}/stdout").text == "late\n"
        eventually(lambda: all(tagged_instances(world)[name] == "terminated" for name in late), 20,
                   "the reconcile destroys the late instances")

    [dear_node] = node_rows(server.database_url)[3:]
    assert (dear_node.cloud, dear_node.state) == ("dear", "ready"), dear_node
    assert tagged_instances(world)[dear_node.name] == "running"
    assert "reconcile: destroying VM" in server.log.read_text()


def test_waiting_jobs_say_why_and_jobs_no_cloud_can_run_fail(server, proxy, dear_proxy, sshd):
    cheap = proxy
    two_clouds(server, cheap, dear_proxy, sshd, dear={"enabled": False})
    cheap.fail("RunInstances", "InternalError", "An internal error has occurred", status=500)
    with client(server) as api:
        job_id = submit(api, job(busybox_image(), {"cmd": "echo never"}))
        eventually(lambda: clouds_listed(server)["cheap"]["penalty_until"], 30, "cheap is in the penalty box")
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clouds_listed(server)["cheap"]["penalty_until"]))
        expected = f"in the penalty box until {until}"
        waiting = eventually(lambda: (d := describe(api, job_id))["statusReason"].endswith(expected) and d, 10,
                             "the job says it waits for the penalty box")
        assert waiting["status"] == "idle"
        assert waiting["statusReason"] == f"Waiting for resources: cheap: {expected}"
        assert wait_reasons(server, job_id) == {"cheap": expected}

        # Bigger than every flavour of every enabled cloud: fails at once, with the reason.
        huge = submit(api, job(busybox_image(), {"cmd": "echo huge"}, cpus=64))
        failed = wait_for(api, huge, timeout=10)
        assert failed["status"] == "failed" and failed["statusReason"].startswith("No matching resources"), failed
        assert describe(api, job_id)["status"] == "idle"
        assert api.delete(f"/jobs/{job_id}").status_code == 200
    assert all(n.cloud == "cheap" and n.state == "failed" for n in node_rows(server.database_url))
