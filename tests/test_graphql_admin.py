"""The admin side of GraphQL through a real client (gql over HTTP) against a running server:
nodes and clouds to read, the admin mutations, and who may do what (DESIGN.md 3.2, 3.7):
non-admins are refused every admin query, mutation and field, and no answer ever holds a cloud's
credentials. Then drain and delete, through CloudService on SQLite and PostgreSQL, and for real on
the local cloud."""
import json
import time

import httpx
import pytest
from cryptography.fernet import Fernet
from gql.transport.exceptions import TransportQueryError
from graphql import GraphQLInterfaceType, GraphQLObjectType
from sqlalchemy import select, update

from gateway.graphql.schema import schema
from gateway.services.clouds import DELETED_BY_ADMIN, REQUEUED_BY_ADMIN, CloudService
from provisioner.drivers.local import LocalNodeDriver, process_alive
from provisioner.planner import DRAINED
from schema.credentials import CredentialBox
from schema.db import make_engine, upgrade
from schema.errors import InvalidState, NotFound
from schema.tables import clouds, jobs, nodes
from tests.conftest import simple_job
from tests.images import busybox_image
from tests.jobs import job, submit, wait_for
from tests.live import LiveServer
from tests.test_clouds_admin import ACCESS, SECRET, add_aws, admin, cloud_doc, insert_node  # noqa: F401 - admin
from tests.test_graphql import client, error_code, request

CLOUD_FIELDS = """name provider site region enabled hasCredentials health penaltyBoxUntil spend settings
    usage { instances maxInstances cpus maxCpus memoryMb maxMemoryMb booting maxBooting }
    flavours { name cpus memoryMb diskGb price }"""
NODE_FIELDS = f"""id name cloudName flavour state stateReason cpus memoryMb diskGb createdAt endedAt lastHeartbeat
    address price cloud {{ {CLOUD_FIELDS} }} jobs {{ id status }}"""

ADD = f"""mutation ($input: JSON!, $credentials: JSON) {{
    addCloud(input: $input, credentials: $credentials) {{ {CLOUD_FIELDS} }} }}"""
UPDATE = f"""mutation ($name: String!, $changes: JSON!) {{
    updateCloud(name: $name, changes: $changes) {{ {CLOUD_FIELDS} }} }}"""
ENABLE = "mutation ($name: String!) { enableCloud(name: $name) { name enabled } }"
DISABLE = "mutation ($name: String!) { disableCloud(name: $name) { name enabled } }"
REMOVE = "mutation ($name: String!) { removeCloud(name: $name) }"
CREDENTIALS = """mutation ($name: String!, $c: JSON!) {
    setCloudCredentials(name: $name, credentials: $c) { name hasCredentials } }"""
DRAIN = f"mutation ($id: ID!) {{ drainNode(id: $id) {{ {NODE_FIELDS} }} }}"
DELETE = f"mutation ($id: ID!) {{ deleteNode(id: $id) {{ {NODE_FIELDS} }} }}"
TOKEN = """mutation ($username: String!, $groups: [String!], $admin: Boolean!, $email: String, $days: Float!) {
    createToken(username: $username, groups: $groups, admin: $admin, email: $email, days: $days) }"""
CLOUDS = f"{{ clouds {{ {CLOUD_FIELDS} }} }}"
CLOUD = f"query ($name: String!) {{ cloud(name: $name) {{ {CLOUD_FIELDS} }} }}"
NODES = f"query ($cloud: String, $gone: Boolean!) {{ nodes(cloud: $cloud, includeGone: $gone) {{ {NODE_FIELDS} }} }}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphql-admin")
    with LiveServer(root / "data", f"sqlite:///{root / 'state.db'}") as live:  # no provisioner: nodes stay put
        live.engine = make_engine(live.database_url)
        live.admin = live.token("root", "--admin")
        yield live
        live.engine.dispose()
    assert "Traceback" not in live.log.read_text()


def run(server, token: str, query: str, **variables) -> dict:
    return client(server, token).execute(request(query, **variables))


def error_of(server, token: str, query: str, **variables) -> tuple[str, str]:
    """(code, message) of the one error a request answers."""
    with pytest.raises(TransportQueryError) as raised:
        run(server, token, query, **variables)
    [error] = raised.value.errors
    return error.get("extensions", {}).get("code"), error["message"]


def raw(server, token: str, query: str, **variables) -> str:
    """The answer's text as it comes over the wire."""
    response = httpx.post(f"{server.url}/graphql", json={"query": query, "variables": variables},
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.text


def assign(server, job_id: int, node_id: int, status: str = "idle") -> None:
    with server.engine.begin() as connection:
        connection.execute(update(jobs).where(jobs.c.id == job_id).values(
            node_id=node_id, status=status, attempt=1 if status == "running" else 0))


def submit_as(server, token: str) -> int:
    response = httpx.post(f"{server.url}/v1/jobs", json=simple_job(), headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def everything(server) -> str:
    """Every cloud and node, as an admin reads them."""
    return json.dumps([run(server, server.admin, CLOUDS), run(server, server.admin, NODES, gone=True)])


def stored(server) -> dict:
    """What admins set and change: every cloud's settings and credentials, every node's state."""
    return run(server, server.admin, """{ clouds { settings hasCredentials }
        nodes(includeGone: true) { id state stateReason endedAt jobs { id } } }""")


# -- who may ------------------------------------------------------------------------------------

def test_non_admins_are_refused_every_admin_query_and_mutation_and_nothing_changes(server):
    run(server, server.admin, ADD, input=cloud_doc("guarded"))
    node_id = insert_node(server.engine, "guarded")
    before = stored(server)
    user = server.token("mallory")
    operations = [
        ("{ nodes { id } }", {}), ("{ clouds { name } }", {}), (CLOUD, {"name": "guarded"}),
        (ADD, {"input": cloud_doc("sneaky")}), (UPDATE, {"name": "guarded", "changes": {"site": "x"}}),
        (ENABLE, {"name": "guarded"}), (DISABLE, {"name": "guarded"}), (REMOVE, {"name": "guarded"}),
        (CREDENTIALS, {"name": "guarded", "c": {"secret": SECRET}}),
        (DRAIN, {"id": str(node_id)}), (DELETE, {"id": str(node_id)}),
        (TOKEN, {"username": "mallory", "admin": True, "days": 1}),
    ]
    for query, variables in operations:
        assert error_of(server, user, query, **variables) == ("FORBIDDEN", "Only admins may do this"), query
        assert error_code(server, None, query, **variables) == "UNAUTHENTICATED", query
    assert stored(server) == before


def test_a_job_owner_reads_their_node_and_where_its_cloud_is_but_not_the_admin_fields(server):
    run(server, server.admin, ADD, input=cloud_doc("shared", site="uni-a", region="north"))
    node_id = insert_node(server.engine, "shared", address="10.9.8.7", price=0.5)
    alice, bob = server.token("alice"), server.token("bob")
    mine, theirs = submit_as(server, alice), submit_as(server, bob)
    assign(server, mine, node_id, "running")
    assign(server, theirs, node_id)
    query = """query ($id: ID!) { job(id: $id) { node { id name cloudName state stateReason cpus memoryMb diskGb
        createdAt endedAt lastHeartbeat cloud { name provider site region } jobs { id status } } } }"""
    node = run(server, alice, query, id=str(mine))["job"]["node"]
    assert node["id"] == str(node_id) and node["cloudName"] == "shared" and node["state"] == "READY"
    assert node["cloud"] == {"name": "shared", "provider": "ec2", "site": "uni-a", "region": "north"}
    assert node["jobs"] == [{"id": str(mine), "status": "RUNNING"}]  # not bob's job on the same node
    for field in ("address", "price", *(f"cloud {{ {f} }}" for f in (
            "enabled", "hasCredentials", "health", "penaltyBoxUntil", "usage { cpus }", "spend",
            "flavours { name }", "settings"))):
        refused = f"query ($id: ID!) {{ job(id: $id) {{ node {{ name {field} }} }} }}"
        assert error_code(server, alice, refused, id=str(mine)) == "FORBIDDEN", field
    # The refusal is the field's: the rest of the answer comes.
    answer = json.loads(raw(server, alice, "query ($id: ID!) { job(id: $id) { node { name address } } }",
                            id=str(mine)))
    assert answer["data"]["job"]["node"]["address"] is None and answer["data"]["job"]["node"]["name"]
    assert [e["extensions"]["code"] for e in answer["errors"]] == ["FORBIDDEN"]
    # An admin reads it all, and every job on the node.
    [listed] = run(server, server.admin, NODES, cloud="shared", gone=False)["nodes"]
    assert listed["address"] == "10.9.8.7" and listed["price"] == 0.5
    assert [j["id"] for j in listed["jobs"]] == [str(mine), str(theirs)]
    assert listed["cloud"]["usage"]["instances"] == 1 and listed["cloud"]["enabled"] is True


def test_no_query_can_read_credentials(server):
    # In the schema: no field answers a cloud's credentials, only whether it has them. (A job's
    # tasks show their imagePullCredential redacted: tests/test_graphql_jobs.py.)
    types = schema._schema.type_map
    named = {f"{name}.{field}: {schema_type.fields[field].type}" for name, schema_type in types.items()
             if isinstance(schema_type, (GraphQLObjectType, GraphQLInterfaceType)) and not name.startswith("__")
             for field in schema_type.fields if "credential" in field.lower() or "secret" in field.lower()}
    # (webhookSecret is the caller's own key for checking its webhooks' signatures.)
    assert named - {"Task.imagePullCredential: ImagePullCredential", "Query.webhookSecret: String!"} == {
        "Cloud.hasCredentials: Boolean", "Mutation.setCloudCredentials: Cloud!"}

    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    answers = [raw(server, server.admin, ADD, input=cloud_doc("vault"), credentials={"key": ACCESS, "secret": SECRET})]
    insert_node(server.engine, "vault")
    answers.append(raw(server, server.admin, CREDENTIALS, name="vault",
                       c={"key": ACCESS, "secret": f"{SECRET}-2", "ssh_private_key": key}))
    assert json.loads(answers[-1])["data"]["setCloudCredentials"] == {"name": "vault", "hasCredentials": True}
    # Bad credentials: the error never quotes them, and those set stay.
    for bad in ({"key": ACCESS, "secret": [SECRET]}, {SECRET: ACCESS}, SECRET, {"secret": f"{SECRET}\x00"}):
        code, message = error_of(server, server.admin, CREDENTIALS, name="vault", c=bad)
        assert code == "BAD_USER_INPUT" and message.startswith("Invalid credentials: "), message
        answers.append(message)
    answers += [raw(server, server.admin, CLOUDS), raw(server, server.admin, CLOUD, name="vault"),
                raw(server, server.admin, NODES, cloud="vault", gone=True), everything(server)]
    for text in [*answers, server.log.read_text()]:
        assert SECRET not in text and ACCESS not in text and "b3BlbnNzaC1rZXktdjEAAAAA" not in text, text

    with server.engine.connect() as connection:
        sealed = connection.execute(select(clouds.c.credentials).where(clouds.c.name == "vault")).scalar_one()
    assert CredentialBox.for_data_dir(server.data_dir).open(sealed) == {
        "key": ACCESS, "secret": f"{SECRET}-2", "ssh_private_key": key}


# -- clouds -------------------------------------------------------------------------------------

def test_add_read_update_enable_disable_and_remove_a_cloud(server):
    added = run(server, server.admin, ADD, input=cloud_doc("aws", site="aws-eu", max_cpus=64,
                                                           max_memory_mb=1 << 40))["addCloud"]
    assert (added["name"], added["provider"], added["site"], added["region"]) == ("aws", "ec2", "aws-eu", "eu-west-1")
    assert added["enabled"] is True and added["hasCredentials"] is False and added["health"] == 1.0
    assert added["penaltyBoxUntil"] is None and added["spend"] == 0
    assert added["usage"] == {"instances": 0, "maxInstances": None, "cpus": 0, "maxCpus": 64, "memoryMb": 0,
                              "maxMemoryMb": float(1 << 40), "booting": 0, "maxBooting": 4}
    assert added["flavours"] == [{"name": "m1", "cpus": 2, "memoryMb": 4096, "diskGb": 20, "price": 0.05}]
    # settings: what addCloud takes, as `prominence-server cloud show` prints it
    assert added["settings"]["max_cpus"] == 64 and added["settings"]["idle_timeout"] == 600
    assert run(server, server.admin, CLOUD, name="aws")["cloud"] == added
    assert added in run(server, server.admin, CLOUDS)["clouds"]

    changed = run(server, server.admin, UPDATE, name="aws", changes={"max_booting": 2, "site": "aws-2"})["updateCloud"]
    assert changed["usage"]["maxBooting"] == 2 and changed["site"] == "aws-2" and changed["region"] == "eu-west-1"
    assert run(server, server.admin, DISABLE, name="aws")["disableCloud"] == {"name": "aws", "enabled": False}
    assert run(server, server.admin, ENABLE, name="aws")["enableCloud"] == {"name": "aws", "enabled": True}
    assert run(server, server.admin, CLOUD, name="aws")["cloud"]["usage"]["maxBooting"] == 2

    node_id = insert_node(server.engine, "aws")
    assert error_of(server, server.admin, REMOVE, name="aws") == (
        "CONFLICT", "Cloud aws still has 1 node not yet destroyed: disable it, and remove it once they are gone")
    with server.engine.begin() as connection:
        connection.execute(update(nodes).where(nodes.c.id == node_id).values(state="deleted", ended_at=time.time()))
    assert run(server, server.admin, REMOVE, name="aws") == {"removeCloud": "aws"}
    assert error_of(server, server.admin, CLOUD, name="aws") == ("NOT_FOUND", "No such cloud: aws")
    # Its gone node still says which cloud it was on.
    [gone] = [n for n in run(server, server.admin, NODES, gone=True)["nodes"] if n["id"] == str(node_id)]
    assert gone["cloudName"] == "aws" and gone["cloud"] is None


BAD_CLOUDS = [
    ({**cloud_doc("new"), "colour": "red"}, 'Invalid cloud: "colour" is not an allowed field'),
    (cloud_doc("new", max_booting=0), "Invalid cloud: max_booting: input should be greater than or equal to 1"),
    (cloud_doc("new", flavours=[{"name": "a", "cpus": 1, "memory_mb": 1, "disk_gb": 1, "price": -1}]),
     "Invalid cloud: flavours[0].price: input should be greater than or equal to 0"),
    (cloud_doc("new", driver_args={"secret": SECRET}),
     "Invalid cloud: driver_args: must not hold secret: set secrets with `cloud set-credentials`"),
    (cloud_doc("Bad Name"), "Invalid cloud: name: string should match pattern '^[a-z0-9][a-z0-9-]{0,39}$'"),
    ({**cloud_doc("new"), "credentials": {"secret": SECRET}}, 'Invalid cloud: "credentials" is not an allowed field'),
    ({"name": "new", "provider": "ec2"}, "Invalid cloud: flavours: is required"),
    (["not", "a", "mapping"], "Invalid cloud: "),
    ("ec2", "Invalid cloud: "),
]


def test_bad_cloud_input_names_the_field_and_changes_nothing(server):
    run(server, server.admin, ADD, input=cloud_doc("steady"))
    before = stored(server)
    for document, message in BAD_CLOUDS:
        code, said = error_of(server, server.admin, ADD, input=document)
        assert code == "BAD_USER_INPUT" and said.startswith(message), (document, said)
        assert SECRET not in said
    assert error_of(server, server.admin, ADD, input=cloud_doc("new"), credentials={"key": 5})[0] == "BAD_USER_INPUT"
    assert error_of(server, server.admin, ADD, input=cloud_doc("steady")) == ("CONFLICT", "Cloud steady already exists")
    for changes, message in [
            ({"colour": "red"}, 'Invalid cloud: "colour" is not a field that can be changed'),
            ({"name": "renamed"}, 'Invalid cloud: "name" is not a field that can be changed'),
            ({"idle_timeout": -5}, "Invalid cloud: idle_timeout: input should be greater than 0"),
            ({"node_root": "relative"}, "Invalid cloud: node_root: must be an absolute path without .."),
            (5, "Invalid cloud: the changes must be a mapping of fields to values"),
            ("site", "Invalid cloud: the changes must be a mapping of fields to values"),
            ([["site", "x"]], "Invalid cloud: the changes must be a mapping of fields to values")]:
        assert error_of(server, server.admin, UPDATE, name="steady", changes=changes) == ("BAD_USER_INPUT", message)
    for query, variables in [(UPDATE, {"name": "nope", "changes": {"site": "x"}}), (ENABLE, {"name": "nope"}),
                             (REMOVE, {"name": "nope"}), (CREDENTIALS, {"name": "nope", "c": {"key": "k"}}),
                             (CLOUD, {"name": "nope"}), (CLOUD, {"name": "no\x00pe"}), (ENABLE, {"name": "x\x00"})]:
        assert error_code(server, server.admin, query, **variables) == "NOT_FOUND", (query, variables)
    assert run(server, server.admin, NODES, cloud="no\x00pe", gone=True) == {"nodes": []}
    assert stored(server) == before


# -- nodes --------------------------------------------------------------------------------------

def test_drain_and_delete_a_node(server):
    run(server, server.admin, ADD, input=cloud_doc("pool"))
    ready = insert_node(server.engine, "pool")
    booting = insert_node(server.engine, "pool", "creating", last_heartbeat=None, address="")
    gone = insert_node(server.engine, "pool", "deleted", ended_at=time.time())
    alice = server.token("alice")
    running, assigned = submit_as(server, alice), submit_as(server, alice)
    assign(server, running, ready, "running")
    assign(server, assigned, ready)

    drained = run(server, server.admin, DRAIN, id=str(ready))["drainNode"]
    assert (drained["state"], drained["stateReason"], drained["endedAt"]) == ("DRAINING", DRAINED, None)
    assert [j["id"] for j in drained["jobs"]] == [str(running), str(assigned)]  # they stay: drained, not deleted
    assert run(server, server.admin, DRAIN, id=str(ready))["drainNode"]["state"] == "DRAINING"  # again: no change
    assert error_of(server, server.admin, DRAIN, id=str(booting)) == (
        "INVALID_STATE", f"Node {booting} is still booting (creating): it can be drained once it is ready")
    assert error_of(server, server.admin, DRAIN, id=str(gone)) == (
        "INVALID_STATE", f"Node {gone} is deleted: it has left the pool already")

    deleted = run(server, server.admin, DELETE, id=str(ready))["deleteNode"]
    assert (deleted["state"], deleted["stateReason"], deleted["jobs"]) == ("DELETING", DELETED_BY_ADMIN, [])
    assert deleted["endedAt"] is not None
    for job_id in (running, assigned):  # back in the queue, without counting a retry
        listed = run(server, alice, "query ($id: ID!) { job(id: $id) { status statusReason } }", id=str(job_id))
        assert listed["job"]["status"] == "IDLE"
    assert listed["job"]["statusReason"] == REQUEUED_BY_ADMIN
    with server.engine.connect() as connection:
        assert connection.execute(select(jobs.c.node_id, jobs.c.retries).where(
            jobs.c.id.in_((running, assigned)))).all() == [(None, 0), (None, 0)]
    assert error_code(server, server.admin, DELETE, id=str(ready)) == "INVALID_STATE"
    assert error_code(server, server.admin, DELETE, id=str(booting)) == "INVALID_STATE"
    assert error_code(server, server.admin, DRAIN, id=str(ready)) == "INVALID_STATE"

    for query in (DRAIN, DELETE):
        assert error_of(server, server.admin, query, id="999999") == ("NOT_FOUND", "No such node: 999999")
        for bad in ("x", "-1", "0", str(2**63), "1.5", ""):
            assert error_code(server, server.admin, query, id=bad) == "BAD_USER_INPUT", bad
    assert [n["id"] for n in run(server, server.admin, NODES, cloud="pool", gone=False)["nodes"]] == [str(booting)]
    assert [n["id"] for n in run(server, server.admin, NODES, cloud="pool", gone=True)["nodes"]] == [
        str(ready), str(booting), str(gone)]


# -- tokens -------------------------------------------------------------------------------------

def test_create_token_makes_a_token_that_works_on_v1_and_graphql(server):
    token = run(server, server.admin, TOKEN, username="zoe", groups=["physics"], admin=False,
                email="zoe@example.org", days=1)["createToken"]
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(f"{server.url}/v1/jobs", json=simple_job(), headers=headers)
    assert created.status_code == 201, created.text
    assert [j["id"] for j in httpx.get(f"{server.url}/v1/jobs", headers=headers).json()] == [created.json()["id"]]
    assert run(server, token, "{ viewer { name groups admin } }")["viewer"] == {
        "name": "zoe", "groups": ["physics"], "admin": False}
    assert error_code(server, token, "{ clouds { name } }") == "FORBIDDEN"
    boss = run(server, server.admin, TOKEN, username="boss", admin=True, days=0.5)["createToken"]
    assert "clouds" in run(server, boss, "{ clouds { name } }")


@pytest.mark.parametrize("variables, field", [
    ({"username": ""}, "username"), ({"username": "a/b"}, "username"), ({"username": "a\x00"}, "username"),
    ({"username": "x" * 129}, "username"), ({"groups": ["ok", "bad group"]}, "groups[1]"),
    ({"email": "nope"}, "email"), ({"email": "a@b\x00"}, "email"), ({"days": 0}, "days"), ({"days": -1}, "days"),
    ({"days": 3651}, "days"),
])
def test_create_token_refuses_bad_claims_naming_the_field(server, variables, field):
    code, message = error_of(server, server.admin, TOKEN, **{"username": "ok", "admin": False, "days": 1, **variables})
    assert code == "BAD_USER_INPUT" and message.startswith(f"{field}: "), message


# -- drain and delete in the service, on SQLite and PostgreSQL ----------------------------------

@pytest.fixture
def service(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    yield CloudService(engine, CredentialBox(Fernet.generate_key())), engine
    engine.dispose()


def insert_job(engine, job_id: int, owner: str, node_id: int, status: str) -> None:
    from sqlalchemy import insert

    with engine.begin() as connection:
        connection.execute(insert(jobs).values(id=job_id, owner=owner, status=status, spec={"tasks": []},
                                               execution={}, create_time=int(time.time()), node_id=node_id,
                                               attempt=1 if status == "running" else 0))


def test_the_service_drains_then_deletes_a_node(service):
    clouds_, engine = service
    clouds_.add(cloud_doc("aws"))
    node_id = insert_node(engine, "aws")
    booting = insert_node(engine, "aws", "configuring")
    insert_job(engine, 1, "alice", node_id, "running")
    insert_job(engine, 2, "bob", node_id, "idle")
    insert_job(engine, 3, "alice", node_id, "completed")
    assert {k: [r.id for r in v] for k, v in clouds_.jobs_on_nodes([node_id, booting]).items()} == {
        node_id: [1, 2], booting: []}
    assert [r.id for r in clouds_.jobs_on_nodes([node_id], owner="alice")[node_id]] == [1]
    assert set(clouds_.by_name(["aws", "nope", "x\x00"])) == {"aws"}

    assert clouds_.drain_node(node_id).state == "draining"
    assert clouds_.get("aws").instances == 2  # a draining node is still live
    with pytest.raises(InvalidState, match="still booting"):
        clouds_.drain_node(booting)
    with pytest.raises(NotFound, match="No such node: 424242"):
        clouds_.delete_node(424242)
    with pytest.raises(NotFound):
        clouds_.drain_node(2**63)

    view = clouds_.delete_node(node_id)
    assert (view.state, view.state_reason) == ("deleting", DELETED_BY_ADMIN) and view.ended_at is not None
    with engine.connect() as connection:
        rows = connection.execute(select(jobs.c.id, jobs.c.status, jobs.c.node_id, jobs.c.retries, jobs.c.status_reason)
                                  .order_by(jobs.c.id)).all()
    assert rows == [(1, "idle", None, 0, REQUEUED_BY_ADMIN), (2, "idle", None, 0, REQUEUED_BY_ADMIN),
                    (3, "completed", node_id, 0, "")]
    assert clouds_.get("aws").instances == 1
    with pytest.raises(InvalidState, match=f"Node {node_id} is deleting: it has left the pool already"):
        clouds_.delete_node(node_id)


def test_node_drain_and_delete_from_the_command_line(admin):  # noqa: F811 - the fixture
    add_aws(admin)
    node_id = admin.add_node("aws")
    assert admin.ok("node", "drain", str(node_id)).startswith(f"node {node_id} (prominence-test-aws-")
    assert admin.json("node", "list", "--json")[0]["state"] == "draining"
    assert "is deleted: its jobs went back to the queue" in admin.ok("node", "delete", str(node_id))
    [node] = admin.json("node", "list", "--json", "--all")
    assert node["state"] == "deleting" and node["ended_at"] is not None
    assert admin("node", "delete", str(node_id))[2] == (
        f"prominence-server: Node {node_id} is deleting: it has left the pool already\n")
    assert admin("node", "drain", "4242")[2] == "prominence-server: No such node: 4242\n"
    assert admin("node", "drain", str(2**64))[2] == f"prominence-server: No such node: {2**64}\n"


# -- for real, on the local cloud ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_drain_then_delete_on_the_local_cloud(tmp_path):
    """A drained node finishes its job, takes no new one and goes; a deleted node's job runs again
    elsewhere, and its VM (here: its agent) is destroyed within seconds, not at the next reconcile."""
    image = busybox_image()
    live = LiveServer(tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}", provisioner=True,
                      extra_args=("--local-cpus", "2", "--local-memory-mb", "2048", "--reconcile-interval", "600"),
                      env={"PROMINENCE_LOG_LEVEL": "info"})
    try:
        with live, httpx.Client(base_url=live.url + "/v1", timeout=30,
                                headers={"Authorization": f"Bearer {live.token('alice')}"}) as api:
            admin = live.token("root", "--admin")

            def eventually(check, timeout: float, what: str) -> None:
                deadline = time.monotonic() + timeout
                while not check():
                    assert time.monotonic() < deadline, what
                    time.sleep(0.2)

            def node_of(job_id: int) -> dict:
                """The node the job runs on, once its launch is over. (A node's agent registers
                and runs jobs before ansible-runner returns; until the launcher sees it ready,
                it takes a drained or deleted node for a failed boot.)"""
                found = []
                eventually(lambda: found.extend(
                    n for n in run(live, admin, NODES, gone=False)["nodes"]
                    if any(j["id"] == str(job_id) and j["status"] == "RUNNING" for j in n["jobs"])) or found,
                    60, f"job {job_id} runs")
                eventually(lambda: f"node {found[0]['name']} on local is ready" in live.log.read_text(), 30,
                           "its launch is over")
                return found[0]

            def state_of(node_id: str) -> tuple[str, str]:
                [node] = [n for n in run(live, admin, NODES, gone=True)["nodes"] if n["id"] == node_id]
                return node["state"], node["stateReason"]

            first = submit(api, job(image, {"cmd": "sleep 8"}))
            drained = node_of(first)
            assert run(live, admin, DRAIN, id=drained["id"])["drainNode"]["state"] == "DRAINING"
            second = submit(api, job(image, {"cmd": "sleep 30"}))
            other = node_of(second)
            assert other["id"] != drained["id"]  # the draining node took no new job
            assert wait_for(api, first)["status"] == "completed"
            eventually(lambda: state_of(drained["id"]) == ("DELETED", DRAINED), 30, "the drained node goes")
            assert "became draining" not in live.log.read_text()

            agents = {p.parent.name: int(p.read_text()) for p in (live.data_dir / "nodes").glob("*/agent.pid")}
            deleted = run(live, admin, DELETE, id=other["id"])["deleteNode"]
            assert deleted["state"] == "DELETING"
            # The provisioner destroys it at its next tick (the reconcile is 10 minutes away).
            eventually(lambda: state_of(other["id"])[0] == "DELETED", 15, "the deleted node's VM is destroyed")
            assert not process_alive(agents[other["name"]])
            third = node_of(second)  # requeued, it runs again on a new node
            assert third["id"] not in (drained["id"], other["id"])
    finally:
        for node in LocalNodeDriver(str(tmp_path / "data" / "nodes")).list_nodes():
            LocalNodeDriver(str(tmp_path / "data" / "nodes")).destroy_node(node)
