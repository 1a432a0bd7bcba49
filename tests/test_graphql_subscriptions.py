"""GraphQL subscriptions over graphql-transport-ws, through a real client (gql's websockets
transport) against a running server: a job's changes while it really runs on the local cloud, its
stdout as it is written, the caller's jobs through a filter, a workflow's state and progress, nodes
for admins, and the token rules (none, bad, another user's job or workflow, expiry during a live
subscription, a job token's attempt).

Most tests run on a server without a provisioner and change rows directly in its database, as the
provisioner in another process would: the server must see those changes too."""
import asyncio
import contextlib
import time
import uuid

import httpx
import pytest
import websockets
from gql import Client, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from sqlalchemy import event, insert, update

from gateway.services.batcher import JobInserter
from gateway.services.clouds import CloudService
from gateway.services.jobs import JobService
from gateway.services.watch import POLL_INTERVAL, Watch
from gateway.settings import Settings
from provisioner.drivers.local import LocalNodeDriver
from schema import workflowrun
from schema.db import make_engine, upgrade
from schema.identity import Identity, TokenAuthority
from schema.jobspec import JobSpec
from schema.signals import Signal
from schema.tables import jobs, nodes, workflows
from schema.workflowspec import parse_workflow
from tests.conftest import simple_job
from tests.images import busybox_image
from tests.jobs import job
from tests.live import LiveServer

JOB_UPDATED = "subscription ($id: ID!) { jobUpdated(id: $id) { id status statusReason startedAt endedAt } }"
JOBS_UPDATED = "subscription ($filter: JobsFilter) { jobsUpdated(filter: $filter) { id status } }"
JOB_OUTPUT = "subscription ($id: ID!, $stream: OutputStream!) { jobOutput(id: $id, stream: $stream) }"
NODE_UPDATED = "subscription { nodeUpdated { id name state stateReason address } }"
WORKFLOW_UPDATED = "subscription ($id: ID!) { workflowUpdated(id: $id) { id status statusReason endTime " \
                   "progress { total done failed queued waiting } } }"


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("subscriptions")
    with LiveServer(root / "data", f"sqlite:///{root / 'state.db'}") as live:  # no provisioner: jobs wait
        yield live


@pytest.fixture(scope="module")
def tokens(server) -> TokenAuthority:
    """Tokens signed with the server's secret (faster than `prominence-server token create`)."""
    return TokenAuthority(Settings.load(str(server.data_dir)).secret)


@pytest.fixture(scope="module")
def database(server):
    """The server's database, changed directly as another process (the provisioner) would."""
    engine = make_engine(server.database_url)
    yield engine
    engine.dispose()


def change(database, table, row_id: int, **values) -> None:
    with database.begin() as connection:
        connection.execute(update(table).where(table.c.id == row_id).values(**values))


def submit(server: LiveServer, token: str, spec: dict | None = None) -> int:
    response = httpx.post(f"{server.url}/v1/jobs", json=spec or simple_job(),
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def status_of(server: LiveServer, token: str, job_id: int) -> str:
    response = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
    return response.json()[0]["status"]


def transport(server: LiveServer, token: str | None, in_payload: bool) -> WebsocketsTransport:
    authorization = {"Authorization": f"Bearer {token}"} if token else {}
    where = {"init_payload": authorization} if in_payload else {"headers": authorization}
    return WebsocketsTransport(url=server.url.replace("http://", "ws://") + "/graphql",
                               subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL], **where)


@contextlib.asynccontextmanager
async def subscribed(server: LiveServer, token: str | None, query: str, in_payload: bool = False, **variables):
    """The subscription's results (their `data`), with the token in the websocket's Authorization
    header or (in_payload) in the connection_init payload."""
    async with Client(transport=transport(server, token, in_payload)) as session:
        document = gql(query)
        document.variable_values = variables
        events = session.subscribe(document)
        try:
            yield events
        finally:
            await events.aclose()  # stopped here: the client would otherwise wait for its end to close


async def next_event(events, timeout: float = 15) -> dict:
    async with asyncio.timeout(timeout):
        return await anext(events)


async def ended(events, timeout: float = 15) -> bool:
    """Whether the server completes the subscription (with no further event)."""
    with contextlib.suppress(StopAsyncIteration):
        await next_event(events, timeout)
        return False
    return True


async def error_code(server: LiveServer, token: str | None, query: str, **variables) -> str:
    with pytest.raises(TransportQueryError) as raised:
        async with subscribed(server, token, query, **variables) as events:
            await next_event(events)
    [error] = raised.value.errors
    return error.get("extensions", {}).get("code", error["message"])


@pytest.mark.anyio
async def test_only_graphql_transport_ws_is_spoken(server):
    """The older graphql-ws protocol is not offered: the server closes such a connection with
    4406 (Subprotocol not acceptable)."""
    url = server.url.replace("http://", "ws://") + "/graphql"
    with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
        async with websockets.connect(url, subprotocols=["graphql-ws"]) as socket:
            await socket.recv()
    assert closed.value.rcvd.code == 4406
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as socket:
        assert socket.subprotocol == "graphql-transport-ws"


@pytest.mark.anyio
async def test_no_token_or_a_bad_one_is_refused(server, tokens):
    job_id = str(submit(server, tokens.issue("alice")))
    for token in (None, "not-a-token", tokens.issue("alice", days=-1), tokens.issue_node_token(1)):
        for query, variables in ((JOB_UPDATED, {"id": job_id}), (JOBS_UPDATED, {}), (NODE_UPDATED, {}),
                                 (JOB_OUTPUT, {"id": job_id, "stream": "STDOUT"})):
            assert await error_code(server, token, query, **variables) == "UNAUTHENTICATED", (token, query)


@pytest.mark.anyio
async def test_another_users_job_is_not_found(server, tokens):
    job_id = str(submit(server, tokens.issue("alice")))
    bob = tokens.issue("bob")
    assert await error_code(server, bob, JOB_UPDATED, id=job_id) == "NOT_FOUND"
    assert await error_code(server, bob, JOB_OUTPUT, id=job_id, stream="STDERR") == "NOT_FOUND"
    assert await error_code(server, bob, JOB_UPDATED, id="x1") == "BAD_USER_INPUT"


@pytest.mark.anyio
async def test_a_change_made_in_the_database_is_pushed(server, tokens, database):
    """Another process (the provisioner, an agent's gateway) changes the job: the token here is in
    the connection_init payload, as browsers send it."""
    token = tokens.issue("carol")
    job_id = submit(server, token)
    async with subscribed(server, token, JOB_UPDATED, in_payload=True, id=str(job_id)) as events:
        first = (await next_event(events))["jobUpdated"]
        assert first["id"] == str(job_id) and first["status"] == "IDLE" and first["startedAt"] is None
        now = int(time.time())
        change(database, jobs, job_id, status="running", status_reason="", start_time=now, attempt=1)
        running = (await next_event(events))["jobUpdated"]
        assert running["status"] == "RUNNING" and running["startedAt"] is not None
        change(database, jobs, job_id, status="completed", end_time=now + 1)
        assert (await next_event(events))["jobUpdated"]["status"] == "COMPLETED"
        assert await ended(events), "the subscription goes on after the job has finished"


@pytest.mark.anyio
async def test_jobs_updated_pushes_the_jobs_its_filter_selects(server, tokens, database):
    dave, erin = tokens.issue("dave"), tokens.issue("erin")
    run = uuid.uuid4().hex
    labelled = {**simple_job(), "labels": {"run": run}}
    first = submit(server, dave, labelled)
    submit(server, dave)
    selected = {"labels": [{"key": "run", "value": run}]}
    async with subscribed(server, dave, JOBS_UPDATED, filter=selected) as events:
        # The current state of what it selects first: no race between subscribing and submitting.
        assert (await next_event(events))["jobsUpdated"] == {"id": str(first), "status": "IDLE"}
        submit(server, erin, labelled)  # another user's: never seen
        submit(server, dave)  # not selected
        second = submit(server, dave, labelled)
        assert (await next_event(events))["jobsUpdated"] == {"id": str(second), "status": "IDLE"}
        change(database, jobs, first, status="running", attempt=1)
        assert (await next_event(events))["jobsUpdated"] == {"id": str(first), "status": "RUNNING"}

    async with subscribed(server, dave, JOBS_UPDATED, filter={**selected, "status": ["IDLE", "COMPLETED"]}) as events:
        assert (await next_event(events))["jobsUpdated"] == {"id": str(second), "status": "IDLE"}
        change(database, jobs, second, status="completed", end_time=int(time.time()))
        assert (await next_event(events))["jobsUpdated"] == {"id": str(second), "status": "COMPLETED"}


@pytest.mark.anyio
async def test_node_updates_are_for_admins(server, tokens, database):
    assert await error_code(server, tokens.issue("alice"), NODE_UPDATED) == "FORBIDDEN"
    name = f"node-{uuid.uuid4().hex[:8]}"
    with database.begin() as connection:
        node_id = connection.execute(insert(nodes).values(
            cloud="elsewhere", name=name, state="creating", state_reason="", cpus=2, memory_mb=2048, disk_gb=10,
            site="elsewhere", region="", info={}, created_at=time.time(), flavour="small", price=0.1, address="192.0.2.7")
        ).inserted_primary_key[0]

    async def next_of_ours(events) -> dict:
        while (node := (await next_event(events))["nodeUpdated"])["id"] != str(node_id):
            pass
        return node

    # The token in the connection_init payload (as browsers send it) also reaches the admin-only
    # fields that check the caller themselves.
    async with subscribed(server, tokens.issue("root", admin=True), NODE_UPDATED, in_payload=True) as events:
        assert await next_of_ours(events) == {"id": str(node_id), "name": name, "state": "CREATING",
                                              "stateReason": None, "address": "192.0.2.7"}
        change(database, nodes, node_id, state="ready")
        assert (await next_of_ours(events))["state"] == "READY"
        change(database, nodes, node_id, state="deleting", state_reason="idle", ended_at=time.time())
        assert (await next_of_ours(events))["state"] == "DELETING"
        change(database, nodes, node_id, state="deleted")  # gone from the pool: seen once more
        assert (await next_of_ours(events))["state"] == "DELETED"


@pytest.mark.anyio
async def test_a_token_that_expires_ends_the_subscription(server, tokens):
    token = tokens.issue("frank", days=3 / 86400)
    job_id = submit(server, token)
    started = time.monotonic()
    with pytest.raises(TransportQueryError) as raised:
        async with subscribed(server, token, JOB_UPDATED, id=str(job_id)) as events:
            assert (await next_event(events))["jobUpdated"]["status"] == "IDLE"
            await next_event(events, timeout=10)
    assert raised.value.errors[0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "expired" in raised.value.errors[0]["message"]
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_a_job_token_ends_with_its_attempt(server, tokens, database):
    """A job's PROMINENCE_TOKEN subscribes while that job runs, and not a moment after."""
    user = tokens.issue("grace")
    running, waiting = submit(server, user), submit(server, user)
    change(database, jobs, running, status="running", attempt=1)
    job_token = tokens.issue_job_token(running, 1, "grace", (), 3600)
    with pytest.raises(TransportQueryError) as raised:
        async with subscribed(server, job_token, JOB_UPDATED, id=str(waiting)) as events:
            assert (await next_event(events))["jobUpdated"]["status"] == "IDLE"
            change(database, jobs, running, status="completed", end_time=int(time.time()))
            await next_event(events)
    assert raised.value.errors[0]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.anyio
async def test_the_watcher_polls_once_for_all_subscribers_and_only_while_there_are_some(tmp_path):
    """The watcher in-process: one SQL statement a poll whatever the number of subscribers (one
    more to read a changed job's row, once for all of them), none without subscribers; a
    subscriber that does not take its changes holds only the latest state."""
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)
    service = JobService(engine, JobInserter(engine), tmp_path, Signal())
    watch = Watch(engine, service, CloudService(engine, None), tmp_path)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",  # SQL statements (not transactions' BEGIN)
                 lambda _c, _cur, statement, *_: statements.append(statement) if statement != "BEGIN" else None)
    watch.start()
    try:
        job_id = await service.submit(Identity("alice"), JobSpec.model_validate(simple_job()))
        await asyncio.sleep(2 * POLL_INTERVAL)
        statements.clear()
        await asyncio.sleep(3 * POLL_INTERVAL)
        assert statements == [], "it polls with nobody subscribing"
        with contextlib.ExitStack() as stack:
            feeds = [stack.enter_context(watch.jobs("alice", {job_id})) for _ in range(200)]
            feeds += [stack.enter_context(watch.jobs("alice")) for _ in range(5)]
            slow = stack.enter_context(watch.jobs("alice", {job_id}))
            for feed in feeds:
                assert [row.status for row in await asyncio.wait_for(feed.take(), 5)] == ["idle"]
            statements.clear()
            await asyncio.sleep(1)
            assert 0 < len(statements) <= 1 / POLL_INTERVAL + 1, statements
            assert all("FROM jobs" in statement for statement in statements)

            statements.clear()
            for status, end_time in (("running", None), ("completed", int(time.time()))):
                change(engine, jobs, job_id, status=status, end_time=end_time)
                for feed in feeds:
                    assert [row.status for row in await asyncio.wait_for(feed.take(), 5)] == [status]
            assert sum("execution" in statement for statement in statements) == 2  # each change's row, read once
            assert [row.status for row in await slow.take(0)] == ["completed"]  # the latest state only
        await asyncio.sleep(2 * POLL_INTERVAL)
        statements.clear()
        await asyncio.sleep(3 * POLL_INTERVAL)
        assert statements == []
    finally:
        await watch.stop()
        engine.dispose()


# -- workflows -------------------------------------------------------------------------------------

def chain(name: str = "chain") -> dict:
    """a, then b: b waits (blocked) until a completed."""
    return {"name": name, "jobs": [simple_job(name="a"), simple_job(name="b")], "dependencies": {"a": ["b"]}}


def submit_workflow(server: LiveServer, token: str, spec: dict) -> tuple[int, dict[str, int]]:
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(f"{server.url}/v1/workflows", json=spec, headers=headers)
    assert response.status_code == 201, response.text
    workflow_id = response.json()["id"]
    listed = httpx.get(f"{server.url}/v1/jobs", params={"workflow": "true", "id": workflow_id}, headers=headers)
    return workflow_id, {j["name"].rsplit("/", 1)[1]: j["id"] for j in listed.json()}


def run_job(database, job_id: int, status: str, exit_code: int = 0) -> None:
    """What an agent's reports do to a workflow's job, then the engine's step (the provisioner's tick)."""
    now = int(time.time())
    values = {"status": status, "attempt": 1, "start_time": now}
    if status != "running":
        values.update(end_time=now, in_queue=False, execution={"tasks": [{"exitCode": exit_code}]})
    change(database, jobs, job_id, **values)
    workflowrun.advance(database, now)


async def until(events, done, key: str = "workflowUpdated") -> list[dict]:
    """Events until one for which `done` holds (the watcher may show a state in between)."""
    seen = []
    while not seen or not done(seen[-1]):
        seen.append((await next_event(events))[key])
    return seen


@pytest.mark.anyio
async def test_a_workflow_pushes_its_state_and_progress_until_it_finishes(server, tokens, database):
    token = tokens.issue("henry")
    workflow_id, ids = submit_workflow(server, token, chain())
    async with subscribed(server, token, WORKFLOW_UPDATED, in_payload=True, id=str(workflow_id)) as events:
        first = (await next_event(events))["workflowUpdated"]
        assert first == {"id": str(workflow_id), "status": "idle", "statusReason": None, "endTime": None,
                         "progress": {"total": 2, "done": 0, "failed": 0, "queued": 1, "waiting": 1}}
        run_job(database, ids["a"], "running")
        seen = await until(events, lambda w: w["status"] == "running")
        assert seen[-1]["progress"] == {"total": 2, "done": 0, "failed": 0, "queued": 1, "waiting": 1}
        run_job(database, ids["a"], "completed")  # b is released: queued again
        seen = await until(events, lambda w: w["progress"]["done"] == 1 and w["progress"]["queued"] == 1)
        assert seen[-1]["status"] == "running"
        run_job(database, ids["b"], "completed", exit_code=0)
        seen = await until(events, lambda w: w["status"] != "running")
        assert seen[-1]["status"] == "completed" and seen[-1]["endTime"] is not None
        assert seen[-1]["progress"] == {"total": 2, "done": 2, "failed": 0, "queued": 0, "waiting": 0}
        assert await ended(events), "the subscription goes on after the workflow has finished"
    # A finished workflow: its state once, then the end.
    async with subscribed(server, token, WORKFLOW_UPDATED, id=str(workflow_id)) as events:
        assert (await next_event(events))["workflowUpdated"]["status"] == "completed"
        assert await ended(events)


@pytest.mark.anyio
async def test_a_failed_or_deleted_workflow_ends_its_subscription(server, tokens, database):
    token = tokens.issue("iris")
    failing, ids = submit_workflow(server, token, chain("failing"))
    deleted, _ = submit_workflow(server, token, chain("deleted"))
    async with subscribed(server, token, WORKFLOW_UPDATED, id=str(failing)) as events:
        assert (await next_event(events))["workflowUpdated"]["status"] == "idle"
        run_job(database, ids["a"], "completed", exit_code=1)  # b never runs
        seen = await until(events, lambda w: w["status"] not in ("idle", "running"))
        assert seen[-1]["status"] == "failed" and seen[-1]["progress"]["failed"] == 1
        assert await ended(events)
    async with subscribed(server, token, WORKFLOW_UPDATED, id=str(deleted)) as events:
        assert (await next_event(events))["workflowUpdated"]["status"] == "idle"
        response = await asyncio.to_thread(httpx.delete, f"{server.url}/v1/workflows/{deleted}",
                                           headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        last = (await next_event(events))["workflowUpdated"]
        assert last["status"] == "deleted" and last["statusReason"] == "Workflow deleted by user"
        assert last["progress"]["queued"] == 0
        assert await ended(events)


@pytest.mark.anyio
async def test_workflow_subscriptions_follow_the_token_rules(server, tokens, database):
    judy = tokens.issue("judy")
    workflow_id, ids = submit_workflow(server, judy, chain())
    assert await error_code(server, tokens.issue("bob"), WORKFLOW_UPDATED, id=str(workflow_id)) == "NOT_FOUND"
    assert await error_code(server, judy, WORKFLOW_UPDATED, id=str(ids["a"])) == "NOT_FOUND"  # a job's id
    assert await error_code(server, judy, WORKFLOW_UPDATED, id="999999999") == "NOT_FOUND"
    assert await error_code(server, judy, WORKFLOW_UPDATED, id="w1") == "BAD_USER_INPUT"
    for token in (None, "not-a-token", tokens.issue("judy", days=-1)):
        assert await error_code(server, token, WORKFLOW_UPDATED, id=str(workflow_id)) == "UNAUTHENTICATED"
    # A token that expires during the subscription ends it, changes or not.
    started = time.monotonic()
    with pytest.raises(TransportQueryError) as raised:
        async with subscribed(server, tokens.issue("judy", days=3 / 86400), WORKFLOW_UPDATED,
                              id=str(workflow_id)) as events:
            assert (await next_event(events))["workflowUpdated"]["status"] == "idle"
            await next_event(events, timeout=10)
    assert raised.value.errors[0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "expired" in raised.value.errors[0]["message"]
    assert time.monotonic() - started < 5
    # A job token holds while its job runs that attempt.
    running = submit(server, judy)
    change(database, jobs, running, status="running", attempt=1)
    job_token = tokens.issue_job_token(running, 1, "judy", (), 3600)
    with pytest.raises(TransportQueryError) as raised:
        async with subscribed(server, job_token, WORKFLOW_UPDATED, id=str(workflow_id)) as events:
            assert (await next_event(events))["workflowUpdated"]["status"] == "idle"
            change(database, jobs, running, status="completed", end_time=int(time.time()))
            await next_event(events)
    assert raised.value.errors[0]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.anyio
async def test_the_watcher_polls_workflows_once_for_all_their_subscribers(tmp_path):
    """One SQL statement a poll for every workflow subscriber; a change's rows read once for all
    (the changes are made through another engine, as by another process, so only the watcher's
    statements are counted)."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine, elsewhere = make_engine(url), make_engine(url)
    upgrade(engine)
    service = JobService(engine, JobInserter(engine), tmp_path, Signal())
    watch = Watch(engine, service, CloudService(engine, None), tmp_path)
    with elsewhere.begin() as connection:
        workflow_id = workflowrun.create(connection, "alice", parse_workflow(chain()), int(time.time()))
        other = workflowrun.create(connection, "bob", parse_workflow(chain()), int(time.time()))
    with elsewhere.connect() as connection:
        first_job = {row.wf_job: row.id for row in connection.execute(
            jobs.select().where(jobs.c.workflow_id == workflow_id))}["a"]
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: statements.append(statement) if statement != "BEGIN" else None)
    watch.start()
    try:
        with contextlib.ExitStack() as stack:
            feeds = [stack.enter_context(watch.workflows("alice", {workflow_id})) for _ in range(200)]
            intruder = stack.enter_context(watch.workflows("mallory", {workflow_id, other}))
            for feed in feeds:
                [record] = await asyncio.wait_for(feed.take(), 5)
                assert (record.row.id, record.row.status, record.progress["queued"]) == (workflow_id, "idle", 1)
            statements.clear()
            await asyncio.sleep(1)
            assert 0 < len(statements) <= 1 / POLL_INTERVAL + 1, statements
            assert all("FROM workflows" in statement for statement in statements)

            statements.clear()
            with elsewhere.begin() as connection:  # a starts: the workflow is running, its progress as it was
                connection.execute(update(jobs).where(jobs.c.id == first_job).values(status="running", attempt=1))
            workflowrun.advance(elsewhere, int(time.time()))
            for feed in feeds:
                assert [r.row.status for r in await asyncio.wait_for(feed.take(), 5)] == ["running"]
            with elsewhere.begin() as connection:
                connection.execute(update(workflows).where(workflows.c.id == workflow_id).values(
                    status="deleted", end_time=int(time.time())))
                workflowrun.stop_jobs(connection, workflow_id, int(time.time()))
            for feed in feeds:
                [record] = await asyncio.wait_for(feed.take(), 5)
                assert (record.row.status, record.progress["queued"]) == ("deleted", 0)
            # Each change's rows read once for all 200 (the workflow's row, then its jobs' counts).
            assert sum("workflows.spec" in statement for statement in statements) == 2, statements
            with pytest.raises(TimeoutError):
                await intruder.take(0.5)  # another user's workflows: never
        await asyncio.sleep(2 * POLL_INTERVAL)
        statements.clear()
        await asyncio.sleep(3 * POLL_INTERVAL)
        assert statements == []
    finally:
        await watch.stop()
        engine.dispose()
        elsewhere.dispose()


# -- jobs that really run on the local cloud -------------------------------------------------------


@pytest.fixture(scope="module")
def cloud_server(tmp_path_factory):
    busybox_image()
    root = tmp_path_factory.mktemp("subscriptions-cloud")
    live = LiveServer(root / "data", f"sqlite:///{root / 'state.db'}", provisioner=True,
                      extra_args=("--idle-timeout", "120", "--local-cpus", "2", "--local-memory-mb", "4096"))
    with live:
        yield live
    driver = LocalNodeDriver(str(live.data_dir / "nodes"))  # the safety net if the server could not stop them
    for node in driver.list_nodes():
        driver.destroy_node(node)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.anyio
async def test_a_running_job_pushes_its_transitions(cloud_server):
    """The first job of this server waits for its node (created and configured for it), runs, ends."""
    token = cloud_server.token("alice")
    job_id = submit(cloud_server, token, job(busybox_image(), {"cmd": "sleep 2"}))
    statuses = []
    async with subscribed(cloud_server, token, JOB_UPDATED, id=str(job_id)) as events:
        async with asyncio.timeout(180):
            async for result in events:
                statuses.append(result["jobUpdated"]["status"])
    assert [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s] == ["IDLE", "RUNNING", "COMPLETED"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.anyio
async def test_stdout_streams_while_the_job_runs(cloud_server):
    token = cloud_server.token("alice")
    # The last character's two bytes are written 1.5 s apart: they reach the server in two pieces.
    script = "for i in 1 2 3 4; do echo line $i; sleep 1; done; echo warn >&2; printf '\\303'; sleep 1.5; " \
             "printf '\\251 done\\n'"
    job_id = submit(cloud_server, token, job(busybox_image(), {"cmd": "sh", "args": ["-c", script]}))
    pieces = []
    async with subscribed(cloud_server, token, JOB_OUTPUT, id=str(job_id), stream="STDOUT") as events:
        async with asyncio.timeout(180):
            async for result in events:
                if not pieces:
                    assert await asyncio.to_thread(status_of, cloud_server, token, job_id) == "running", \
                        "the first piece came only once the job had finished"
                pieces.append(result["jobOutput"])
    assert "".join(pieces) == "line 1\nline 2\nline 3\nline 4\n\u00e9 done\n"
    assert len(pieces) >= 3 and not any("\ufffd" in piece for piece in pieces), pieces
    async with subscribed(cloud_server, token, JOB_OUTPUT, id=str(job_id), stream="STDERR") as events:
        assert [result["jobOutput"] async for result in events] == ["warn\n"]  # a finished job's: all, then the end
