"""The provisioner's reconcile step, on a real database and the real local driver (no agents)."""
import time

from libcloud.compute.base import NodeSize
from sqlalchemy import insert, select

from gateway.app import build_provisioner
from schema.db import make_engine, upgrade
from schema.identity import TokenAuthority
from schema.signals import Signal
from schema.tables import jobs, nodes
from tests.conftest import simple_job


def test_reconcile_destroys_unknown_vms_and_loses_nodes_whose_vm_vanished(settings, api):
    engine = make_engine(settings.database_url)
    upgrade(engine)
    provisioner = build_provisioner(settings, engine, TokenAuthority(settings.secret), Signal(), Signal())
    driver, service = provisioner._driver, provisioner._config.service_id
    size = NodeSize("local-1cpu", "local-1cpu", 512, 1, None, 0, driver, extra={"cpus": 1})
    stray = driver.create_node(f"prominence-{service}-99", size, ex_metadata={"prominence-service": service})
    foreign = driver.create_node("someone-else-1", size, ex_metadata={"prominence-service": "other"})

    job_id = api.submit(simple_job())
    with engine.begin() as connection:
        node_id = connection.execute(insert(nodes).values(
            cloud="local", name=f"prominence-{service}-1", state="ready", cpus=1, memory_mb=512, disk_gb=1,
            site="local", region="", info={}, created_at=time.time(), last_heartbeat=time.time())
            .returning(nodes.c.id)).scalar_one()
        connection.execute(jobs.update().where(jobs.c.id == job_id).values(status="running", node_id=node_id,
                                                                             attempt=1))
    provisioner.reconcile()
    provisioner.stop()

    assert [vm.name for vm in driver.list_nodes()] == [foreign.name]
    assert stray.name != foreign.name
    with engine.connect() as connection:
        assert connection.execute(select(nodes.c.state).where(nodes.c.id == node_id)).scalar_one() == "lost"
    [job] = api.request("GET", f"/jobs/{job_id}").json()
    assert job["status"] == "idle" and "VM vanished" in job["statusReason"]
    driver.destroy_node(foreign)
    engine.dispose()
