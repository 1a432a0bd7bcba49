"""A bounded schemathesis run: requests generated from the /v1 OpenAPI document (valid and invalid
ones, a bounded number per operation), sent with a valid token to a live server on SQLite and on
PostgreSQL. No answer may be a 5xx."""
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from gateway.openapi import openapi_document
from tests.conftest import simple_job
from tests.live import LiveServer
from tests.services import create_database

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live_api(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    if request.param == "sqlite":
        database_url = f"sqlite:///{root / 'state.db'}"
    else:
        database_url = create_database(request.getfixturevalue("postgres_base_url"), "test_fuzz")
    with LiveServer(root / "data", database_url) as server:
        server.headers = {"Authorization": f"Bearer {server.token('fuzz')}"}
        # A few real jobs, so that generated ids sometimes name one (clone, delete, stdout, ...).
        for _ in range(3):
            httpx.post(f"{server.url}/v1/jobs", json=simple_job(), headers=server.headers).raise_for_status()
        yield server


def test_the_served_document_is_the_one_fuzzed(live_api):
    assert httpx.get(f"{live_api.url}/v1/openapi.json").json() == openapi_document()


schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_no_request_the_api_describes_gets_a_5xx(case, live_api):
    case.call_and_validate(base_url=f"{live_api.url}/v1", headers=live_api.headers, checks=[not_a_server_error],
                           timeout=30)
