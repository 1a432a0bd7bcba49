"""An admin bursts onto EC2 through GraphQL alone: adds a cloud (libcloud's EC2 driver against
moto's EC2 server, through the tests' proxy), sets its credentials, disables the local cloud and
enables the new one with mutations; a job then runs on an EC2 instance and completes. The set-up
(moto, Ec2Proxy, sshd on the subnet's loopback addresses, the live server) is tests/test_ec2_cloud.py's."""
import json
from pathlib import Path

import httpx
import pytest

from tests.jobs import job, submit, wait_for
from tests.services import prepare_ec2_world
from tests.test_ec2_cloud import ec2_cloud, eventually, moto, proxy, server, sshd  # noqa: F401 - fixtures
from tests.test_graphql import client, request

pytestmark = pytest.mark.slow

CLOUD = """name enabled hasCredentials spend usage { instances booting }
    flavours { name cpus memoryMb diskGb price }"""


def test_an_admin_adds_an_ec2_cloud_through_graphql_and_a_job_runs_on_it(server, proxy, sshd):  # noqa: F811
    admin = client(server, server.token("root", "--admin"))

    def mutate(query: str, **variables) -> dict:
        return admin.execute(request(query, **variables))

    world = prepare_ec2_world(proxy.url)
    document = ec2_cloud("aws", world, sshd, server.node_root, idle_timeout=3, enabled=False)
    credentials = document.pop("credentials")
    answers = [
        mutate(f"mutation ($input: JSON!) {{ addCloud(input: $input) {{ {CLOUD} }} }}", input=document),
        mutate(f"mutation ($c: JSON!) {{ setCloudCredentials(name: \"aws\", credentials: $c) {{ {CLOUD} }} }}",
               c=credentials),
        mutate("mutation { disableCloud(name: \"local\") { name enabled } }"),
        mutate(f"mutation {{ enableCloud(name: \"aws\") {{ {CLOUD} }} }}"),
    ]
    assert answers[0]["addCloud"]["hasCredentials"] is False and answers[0]["addCloud"]["enabled"] is False
    assert answers[1]["setCloudCredentials"]["hasCredentials"] is True
    assert answers[2]["disableCloud"] == {"name": "local", "enabled": False}
    assert answers[3]["enableCloud"]["enabled"] is True
    assert [f["name"] for f in answers[3]["enableCloud"]["flavours"]] == ["t2.micro", "t3.small"]

    with httpx.Client(base_url=server.url + "/v1", timeout=30,
                      headers={"Authorization": f"Bearer {server.token()}"}) as api:
        job_id = submit(api, job("busybox", {"cmd": "echo hello from ec2"}))
        done = wait_for(api, job_id, timeout=180)
        assert done["status"] == "completed", done
        assert api.get(f"/jobs/{job_id}/stdout").text == "hello from ec2\n"

    nodes = mutate("""{ nodes(cloud: "aws", includeGone: true) { name cloudName flavour price address state
                        cloud { name hasCredentials } } }""")["nodes"]
    [node] = nodes
    assert (node["cloudName"], node["flavour"], node["price"]) == ("aws", "t2.micro", 0.0116)
    assert node["address"].startswith("127.0.8.") and node["cloud"] == {"name": "aws", "hasCredentials": True}
    [instance] = [i for i in world.driver().list_nodes() if i.name == node["name"]]
    assert instance.extra["tags"]["prominence-node"]
    # Idle for 3 s, it goes.
    eventually(lambda: mutate("""{ nodes(cloud: "aws", includeGone: true) { state } }""")["nodes"] == [
        {"state": "DELETED"}], 30, "the idle node is deleted")
    aws = mutate(f"{{ cloud(name: \"aws\") {{ {CLOUD} }} }}")["cloud"]
    assert aws["spend"] > 0 and aws["usage"]["instances"] == 0

    key = Path(sshd.key_file).read_text()
    for text in (json.dumps([answers, nodes, aws]), server.log.read_text()):
        assert "BEGIN OPENSSH" not in text and key not in text
