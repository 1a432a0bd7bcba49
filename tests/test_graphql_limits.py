"""Limits that keep one GraphQL query from taking the server down, and CORS for browser
frontends, against a running server."""
import httpx
import pytest
from graphql import get_introspection_query

from gateway.graphql.context import MAX_REQUEST_BYTES
from gateway.graphql.limits import MAX_COST
from tests.live import LiveServer
from tests.test_graphql import client, error_code, request
from tests.test_server_command import run_cli

FRONTEND = "https://app.example.org"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphql-limits")
    with LiveServer(root / "data", f"sqlite:///{root / 'state.db'}", extra_args=("--cors-origin", FRONTEND)) as live:
        yield live


def test_introspection_stays_on(server):
    schema = client(server, server.token("alice")).execute(request(get_introspection_query()))["__schema"]
    assert any(t["name"] == "Job" for t in schema["types"])


def test_a_query_that_may_resolve_too_many_fields_is_refused_before_it_runs(server):
    token = server.token("alice")
    pages = " ".join(f"p{i}: jobs(first: 500) {{ edges {{ node {{ id waitReasons {{ cloud reason }} }} }} }}"
                     for i in range(40))
    assert error_code(server, token, f"{{ {pages} }}") == "QUERY_TOO_COMPLEX"
    # The page size of a variable counts: the same query with small pages is fine.
    small = " ".join(f"p{i}: jobs(first: $n) {{ edges {{ node {{ id waitReasons {{ cloud reason }} }} }} }}"
                     for i in range(40))
    assert client(server, token).execute(request(f"query ($n: Int) {{ {small} }}", n=5))["p0"]["edges"] == []
    assert error_code(server, token, f"query ($n: Int) {{ {small} }}", n=500) == "QUERY_TOO_COMPLEX"
    assert MAX_COST >= 500 * 40  # a full page with a few nested fields is well within the limit
    assert client(server, token).execute(request(
        "{ jobs(first: 500) { totalCount edges { cursor node { id name status statusReason createdAt "
        "waitReasons { cloud reason } } } } }"))["jobs"]["totalCount"] == 0


def test_a_query_too_deep_is_refused(server):
    token = server.token("alice")
    nested = "id"
    for _ in range(6):  # a job's node's jobs' node's jobs...: 2 levels each
        nested = f"id node {{ id jobs {{ {nested} }} }}"
    deep = f"{{ jobs {{ edges {{ node {{ {nested} }} }} }} }}"
    answer = httpx.post(f"{server.url}/graphql", json={"query": deep}, headers={"Authorization": f"Bearer {token}"})
    assert "exceeds maximum operation depth of 12" in answer.json()["errors"][0]["message"]
    assert "data" not in answer.json() or answer.json()["data"] is None  # refused before anything ran
    shallow = "{ jobs { edges { node { id node { id jobs { id node { id } } } } } } }"
    assert client(server, token).execute(request(shallow))["jobs"]["edges"] == []


def test_a_query_too_long_is_refused_while_it_is_parsed(server):
    headers = {"Authorization": f"Bearer {server.token('alice')}"}
    response = httpx.post(f"{server.url}/graphql", json={"query": "{" + " viewer { name }" * 5000 + "}"},
                          headers=headers)
    assert response.status_code in (200, 400)
    assert "more than 10000 tokens" in response.json()["errors"][0]["message"]
    # The body is read with /v1's rules first: a size limit (and a deadline), whatever its content.
    huge = httpx.post(f"{server.url}/graphql", content=b'{"query": "' + b" " * MAX_REQUEST_BYTES + b'"}',
                      headers={**headers, "Content-Type": "application/json"})
    assert huge.status_code == 400 and huge.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "larger than the limit" in huge.json()["errors"][0]["message"]
    assert "Traceback" not in server.log.read_text()


def test_cors_allows_only_the_configured_origins(server):
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    allowed = httpx.options(f"{server.url}/graphql", headers={"Origin": FRONTEND, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == FRONTEND
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = httpx.options(f"{server.url}/graphql", headers={"Origin": "https://evil.example", **preflight})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

    body = {"query": "{ viewer { name } }"}
    auth = {"Authorization": f"Bearer {server.token('alice')}"}
    answer = httpx.post(f"{server.url}/graphql", json=body, headers={"Origin": FRONTEND, **auth})
    assert answer.headers["access-control-allow-origin"] == FRONTEND
    other = httpx.post(f"{server.url}/graphql", json=body, headers={"Origin": "https://evil.example", **auth})
    assert "access-control-allow-origin" not in other.headers  # the browser keeps the answer from the page
    listing = httpx.get(f"{server.url}/v1/jobs", headers={"Origin": FRONTEND, **auth})
    assert listing.headers["access-control-allow-origin"] == FRONTEND  # REST too


def test_without_cors_origins_no_browser_origin_is_allowed(tmp_path):
    with LiveServer(tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}") as live:
        answer = httpx.post(f"{live.url}/graphql", json={"query": "{ viewer { name } }"},
                            headers={"Origin": FRONTEND, "Authorization": f"Bearer {live.token('alice')}"})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


@pytest.mark.parametrize("origin", ["https://app.example.org/path", "app.example.org", "ftp://x", "https://"])
def test_a_bad_cors_origin_is_one_clear_line(tmp_path, origin):
    out = run_cli("serve", "--data-dir", str(tmp_path), "--cors-origin", origin)
    assert out.returncode != 0 and f"--cors-origin {origin}: not an origin" in out.stderr
    assert "Traceback" not in out.stderr
