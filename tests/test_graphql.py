"""GraphQL at /graphql through a real client (gql over HTTP) against a running server: the same
tokens and rules as /v1, and errors that carry a code."""
from pathlib import Path

import httpx
import pytest
from gql import Client, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXTransport

from gateway.graphql.schema import schema
from tests.conftest import REPO, simple_job
from tests.live import LiveServer

SDL = REPO / "schema" / "schema.graphql"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphql")
    with LiveServer(root / "data", f"sqlite:///{root / 'state.db'}") as live:  # no provisioner: jobs wait
        yield live


def client(server: LiveServer, token: str | None) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(transport=HTTPXTransport(url=f"{server.url}/graphql", headers=headers))


def submit(server: LiveServer, token: str) -> int:
    response = httpx.post(f"{server.url}/v1/jobs", json=simple_job(), headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def request(query: str, **variables):
    document = gql(query)
    document.variable_values = variables
    return document


def error_code(server: LiveServer, token: str | None, query: str, **variables) -> str:
    with pytest.raises(TransportQueryError) as raised:
        client(server, token).execute(request(query, **variables))
    [error] = raised.value.errors
    return error.get("extensions", {}).get("code", error["message"])


def test_the_sdl_file_is_the_schema():
    """Frontends generate code from schema/schema.graphql: it must be what the server serves."""
    assert Path(SDL).read_text() == schema.as_str() + "\n", "run: python -c \"from gateway.graphql.schema " \
        "import schema; open('schema/schema.graphql','w').write(schema.as_str()+'\\n')\""


def test_the_viewer_is_the_caller(server):
    token = server.token("alice", "--group", "physics", "--admin")
    viewer = client(server, token).execute(gql("{ viewer { name groups admin } }"))["viewer"]
    assert viewer == {"name": "alice", "groups": ["physics"], "admin": True}


def test_a_job_as_graphql_shows_it(server):
    token = server.token("alice")
    job_id = submit(server, token)
    job = client(server, token).execute(request("""query ($id: ID!) {
        job(id: $id) { id name status statusReason waitReasons { cloud reason } createdAt startedAt endedAt } }""",
        id=str(job_id)))["job"]
    rest = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}).json()[0]
    assert job["id"] == str(job_id) and job["status"] == "IDLE" and job["statusReason"] == rest["statusReason"]
    assert job["waitReasons"] == [] and job["startedAt"] is None and job["endedAt"] is None
    assert job["createdAt"].startswith("20") and job["createdAt"].endswith("+00:00")


def test_errors_carry_a_code_and_the_rules_of_v1(server):
    alice, bob = server.token("alice"), server.token("bob")
    job_id = submit(server, alice)
    query = "query ($id: ID!) { job(id: $id) { id } }"
    assert error_code(server, bob, query, id=str(job_id)) == "NOT_FOUND"  # another user's job: not shown
    assert error_code(server, alice, query, id=str(10**12)) == "NOT_FOUND"
    assert error_code(server, alice, query, id="x1") == "BAD_USER_INPUT"
    assert error_code(server, alice, query, id=str(2**63)) == "BAD_USER_INPUT"
    assert error_code(server, None, query, id=str(job_id)) == "UNAUTHENTICATED"
    assert error_code(server, "not-a-token", "{ viewer { name } }") == "UNAUTHENTICATED"


PAGE = """query ($first: Int, $after: String, $last: Int, $before: String, $filter: JobsFilter) {
    jobs(first: $first, after: $after, last: $last, before: $before, filter: $filter) {
        totalCount pageInfo { hasNextPage hasPreviousPage startCursor endCursor } edges { cursor node { id } } } }"""


def test_jobs_are_paged_both_ways_and_filtered(server):
    carol, dave = server.token("carol"), server.token("dave")
    submit(server, dave)  # never in carol's pages
    ids = [str(submit(server, carol)) for _ in range(7)]
    labelled = httpx.post(f"{server.url}/v1/jobs", json={**simple_job(), "labels": {"run": "x"}},
                          headers={"Authorization": f"Bearer {carol}"}).json()["id"]
    ids.append(str(labelled))
    carol_client = client(server, carol)

    def page(**variables):
        return carol_client.execute(request(PAGE, **variables))["jobs"]

    seen, after = [], None
    while True:  # forward, 3 at a time
        jobs = page(first=3, after=after)
        assert jobs["totalCount"] == 8
        seen += [edge["node"]["id"] for edge in jobs["edges"]]
        if not jobs["pageInfo"]["hasNextPage"]:
            break
        after = jobs["pageInfo"]["endCursor"]
    assert seen == ids
    last_two = page(last=2)
    assert [e["node"]["id"] for e in last_two["edges"]] == ids[-2:] and last_two["pageInfo"]["hasPreviousPage"]
    before = page(last=3, before=last_two["pageInfo"]["startCursor"])
    assert [e["node"]["id"] for e in before["edges"]] == ids[-5:-2]
    only = page(filter={"labels": [{"key": "run", "value": "x"}], "status": ["IDLE"]})
    assert only["totalCount"] == 1 and [e["node"]["id"] for e in only["edges"]] == [str(labelled)]
    assert page(filter={"status": ["COMPLETED"]})["totalCount"] == 0

    for variables, code in (({"first": 501}, "BAD_USER_INPUT"), ({"first": 1, "last": 1}, "BAD_USER_INPUT"),
                            ({"after": "bm90LWEtY3Vyc29y"}, "BAD_USER_INPUT"), ({"after": "%%%"}, "BAD_USER_INPUT"),
                            # compared in SQL, where PostgreSQL refuses NUL: a clear error, not a crash
                            ({"filter": {"name": "a\x00"}}, "BAD_USER_INPUT"),
                            ({"filter": {"labels": [{"key": "k\x00", "value": "v"}]}}, "BAD_USER_INPUT")):
        assert error_code(server, carol, PAGE, **variables) == code

def test_a_bad_query_is_an_error_not_a_crash(server):
    headers = {"Authorization": f"Bearer {server.token('alice')}"}
    for query, expected in (("{ job(id: 1) { nope } }", "nope"), ("{ job(id: 1) { id ", "Syntax Error"),
                            ("query ($id: ID!) { job(id: $id) { id } }", "$id")):
        response = httpx.post(f"{server.url}/graphql", json={"query": query}, headers=headers)
        assert response.status_code in (200, 400), response.text
        assert any(expected in e["message"] for e in response.json()["errors"]), response.text
    assert "Traceback" not in server.log.read_text()


def test_unexpected_errors_are_masked_and_logged(caplog):
    """A bug in a resolver: the client sees "Unexpected error.", the log has the details."""
    import asyncio

    import strawberry

    from gateway.graphql.schema import _masked, _Schema, MaskErrors

    @strawberry.type
    class Query:
        @strawberry.field
        async def broken(self) -> int:
            raise RuntimeError("internal detail")

    result = asyncio.run(_Schema(query=Query, extensions=[lambda: MaskErrors(should_mask_error=_masked)])
                         .execute("{ broken }"))
    assert [e.message for e in result.errors] == ["Unexpected error."]
    assert "internal detail" in caplog.text
