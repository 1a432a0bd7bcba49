"""The provisioner's steps on a real database and the real local driver (no agents: nodes are
database rows and node directories, as the provisioner sees them)."""
import time
from pathlib import Path

import pytest
from libcloud.compute.base import NodeSize
from sqlalchemy import insert, select

from gateway.app import build_provisioner
from gateway.settings import Settings
from provisioner.service import SERVICE_STOPPED
from schema.credentials import CredentialBox
from schema.db import make_engine, upgrade
from schema.identity import TokenAuthority
from schema.signals import Signal
from schema.tables import jobs, nodes
from tests.conftest import simple_job


@pytest.fixture
def provisioner(settings):
    """The provisioner of a server on the test's database, with its local driver (not started)."""
    engine = make_engine(settings.database_url)
    upgrade(engine)
    provisioner = build_provisioner(settings, engine, TokenAuthority(settings.secret),
                                    CredentialBox.for_data_dir(settings.data_dir), Signal(), Signal())
    yield provisioner
    provisioner.stop()
    engine.dispose()


def create_vm(provisioner, name: str, service: str):
    """A VM of the local cloud, tagged as the VMs of `service`."""
    driver = provisioner.cloud("local")._driver
    size = NodeSize("local-1cpu", "local-1cpu", 1024, 1, None, 0, driver, extra={"cpus": 1})
    return driver.create_node(name, size, ex_metadata={"prominence-service": service})


def test_reconcile_destroys_unknown_vms_and_loses_nodes_whose_vm_vanished(provisioner, api):
    engine, driver, service = provisioner._engine, provisioner.cloud("local")._driver, provisioner._config.service_id
    stray = create_vm(provisioner, f"prominence-{service}-99", service)
    foreign = create_vm(provisioner, "someone-else-1", "other")
    job_id = api.submit(simple_job())
    node_id = add_ready_node(engine, f"prominence-{service}-1", 1, time.time())
    with engine.begin() as connection:
        connection.execute(jobs.update().where(jobs.c.id == job_id).values(status="running", node_id=node_id,
                                                                             attempt=1))
    provisioner.reconcile()

    assert [vm.name for vm in driver.list_nodes()] == [foreign.name]
    assert stray.name != foreign.name
    with engine.connect() as connection:
        assert connection.execute(select(nodes.c.state).where(nodes.c.id == node_id)).scalar_one() == "lost"
    [job] = api.request("GET", f"/jobs/{job_id}").json()
    assert job["status"] == "idle" and "VM vanished" in job["statusReason"]
    driver.destroy_node(foreign)


def add_ready_node(engine, name: str, cpus: int, last_heartbeat: float) -> int:
    with engine.begin() as connection:
        return connection.execute(insert(nodes).values(
            cloud="local", name=name, state="ready", cpus=cpus, memory_mb=1024 * cpus, disk_gb=10, site="local",
            region="", info={}, created_at=time.time(), last_heartbeat=last_heartbeat)
            .returning(nodes.c.id)).scalar_one()


def test_no_new_work_for_a_node_that_missed_two_heartbeats(tmp_path, database_url, api):
    # A cloud exactly as big as the two nodes: nothing new is launched whatever the outcome.
    settings = Settings.load(data_dir=str(tmp_path / "data"), database_url=database_url, local_cpus=3,
                             local_memory_mb=3072)
    engine = make_engine(settings.database_url)
    provisioner = build_provisioner(settings, engine, TokenAuthority(settings.secret),
                                    CredentialBox.for_data_dir(settings.data_dir), Signal(), Signal())
    interval = provisioner._config.heartbeat_interval
    # The silent node fits the job best and comes first: only its silence keeps the job off it.
    silent = add_ready_node(engine, "silent", 1, time.time() - 3 * interval)
    answering = add_ready_node(engine, "answering", 2, time.time())
    job_id = api.submit(simple_job())
    provisioner.tick()
    with engine.connect() as connection:
        assert connection.execute(select(jobs.c.node_id).where(jobs.c.id == job_id)).scalar_one() == answering
        # missing two heartbeats is not yet being lost (that takes the heartbeat timeout)
        assert connection.execute(select(nodes.c.state).where(nodes.c.id == silent)).scalar_one() == "ready"
    provisioner.stop()
    engine.dispose()


def test_stopping_the_provisioner_destroys_its_local_nodes_and_requeues_their_jobs(provisioner, api):
    engine, driver, service = provisioner._engine, provisioner.cloud("local")._driver, provisioner._config.service_id
    ours = create_vm(provisioner, f"prominence-{service}-1", service)
    foreign = create_vm(provisioner, "someone-else-1", "other")
    node_id = add_ready_node(engine, ours.name, 1, time.time())
    running, assigned, elsewhere = api.submit(), api.submit(), api.submit()
    with engine.begin() as connection:
        connection.execute(jobs.update().where(jobs.c.id == running).values(status="running", node_id=node_id,
                                                                            attempt=1))
        connection.execute(jobs.update().where(jobs.c.id == assigned).values(node_id=node_id))
    provisioner.stop()

    assert [vm.name for vm in driver.list_nodes()] == [foreign.name]
    assert not Path(ours.extra["dir"]).exists()
    with engine.connect() as connection:
        node = connection.execute(select(nodes).where(nodes.c.id == node_id)).one()
        assert (node.state, node.state_reason) == ("deleted", "the service stopped")
        assert connection.execute(select(jobs.c.retries).where(jobs.c.id == running)).scalar_one() == 0
    for job_id in (running, assigned):
        [job] = api.request("GET", f"/jobs/{job_id}").json()
        assert (job["status"], job["statusReason"]) == ("idle", SERVICE_STOPPED)
        assert "retries" not in job["execution"]  # a planned stop is not the job's failure
    [untouched] = api.request("GET", f"/jobs/{elsewhere}").json()
    assert untouched["statusReason"] == "Waiting for resources"
    driver.destroy_node(foreign)


def test_rotated_credentials_are_used_at_once(provisioner, settings):
    """A new key and secret take effect without recreating the cloud: the provisioner rebuilds a
    cloud's driver when its record changes."""
    from gateway.services.clouds import CloudService
    from schema.credentials import CredentialBox

    service = CloudService(provisioner._engine, CredentialBox.for_data_dir(settings.data_dir))
    service.add({"name": "aws", "provider": "ec2", "driver_args": {"region": "us-east-1"},
                 "flavours": [{"name": "t3.small", "cpus": 2, "memory_mb": 2048, "disk_gb": 8, "price": 0.02}]},
                {"key": "AKIAFIRST", "secret": "first-secret"})
    first = provisioner.cloud("aws")
    assert (first._driver.key, first._driver.secret) == ("AKIAFIRST", "first-secret")
    assert provisioner.cloud("aws") is first  # unchanged record: the same driver
    service.set_credentials("aws", {"key": "AKIASECOND", "secret": "second-secret"})
    second = provisioner.cloud("aws")
    assert (second._driver.key, second._driver.secret) == ("AKIASECOND", "second-secret")
