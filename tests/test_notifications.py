"""Notifications (gateway/services/notify.py): e-mails received by a real SMTP server (aiosmtpd) and
signed webhooks received by a real HTTP server, both started here on loopback; retries with
backoff; dead endpoints that hold up nothing else; at least once across a kill -9 of the server;
bad notification inputs refused with a 400 naming the field."""
import asyncio
import email
import email.policy
import hashlib
import hmac
import http.server
import json
import socket
import threading
import time

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from schema.db import make_engine
from schema.tables import jobs, notification_deliveries
from tests.conftest import Api, simple_job
from tests.live import LiveServer
from tests.services import free_port
from tests.test_agent_protocol import add_node, agent, assign

pytestmark = pytest.mark.timeout(120)


# -- the receivers ------------------------------------------------------------------------------

class Mailbox:
    """aiosmtpd's handler: keeps every message it is given."""

    def __init__(self):
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


@pytest.fixture
def smtp():
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield mailbox, f"smtp://127.0.0.1:{controller.port}"
    controller.stop()


class Hooks:
    """A webhook receiver: records each request (time, headers, body) and answers with the next of
    `answers` (a status, or "hang": keep the connection open without answering until released)."""

    def __init__(self):
        self.received: list[tuple[float, dict[str, str], bytes]] = []
        self.answers: list[int | str] = []
        self.default: int | str = 200
        self.release = threading.Event()
        hooks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hooks.received.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                answer = hooks.answers.pop(0) if hooks.answers else hooks.default
                if answer == "hang":
                    hooks.release.wait(60)
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks():
    made = []

    def make() -> Hooks:
        made.append(Hooks())
        return made[-1]
    yield make
    for receiver in made:
        receiver.close()


def wait_until(condition, timeout: float = 15, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()):
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


# -- the service ----------------------------------------------------------------------------------

def notifying_api(tmp_path, database_url: str, **options):
    options = {"webhook_allow_private": True, "notify_timeout": 2.0, "notify_backoff": 0.2,
               "notify_attempts": 4, "mail_from": "batch@prominence.test", **options}
    settings = Settings.load(data_dir=str(tmp_path / "data"), database_url=database_url, run_provisioner=False,
                             **options)
    return TestClient(create_app(settings), raise_server_exceptions=False), settings


@pytest.fixture
def service(tmp_path, database_url, smtp):
    client, settings = notifying_api(tmp_path, database_url, smtp_url=smtp[1])
    with client:
        yield Api(client, settings)


@pytest.fixture
def sqlite_service(tmp_path, smtp):
    client, settings = notifying_api(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", smtp_url=smtp[1])
    with client:
        yield Api(client, settings)


def submit(api: Api, notifications: list, user: str = "alice", email_address: str | None = "alice@example.org",
           **extra) -> int:
    headers = api.headers(user, **({"email": email_address} if email_address else {}))
    response = api.client.post("/v1/jobs", headers=headers, json=simple_job(notifications=notifications, **extra))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def delete(api: Api, job_id: int, user: str = "alice") -> None:
    assert api.request("DELETE", f"/jobs/{job_id}", user).status_code == 200


def deliveries_of(api: Api, job_id: int) -> list:
    with api.client.app.state.engine.connect() as connection:
        return connection.execute(select(notification_deliveries).where(
            notification_deliveries.c.subject_id == job_id).order_by(notification_deliveries.c.seq)).all()


def webhook(url: str) -> dict:
    return {"event": "jobFinished", "type": "webhook", "url": url}


EMAIL = {"event": "jobFinished", "type": "email"}


def webhook_secret(api: Api, user: str = "alice") -> str:
    answer = api.client.post("/graphql", headers=api.headers(user), json={"query": "{ webhookSecret }"})
    return answer.json()["data"]["webhookSecret"]


# -- e-mail ---------------------------------------------------------------------------------------

def test_email_when_a_job_finishes_through_the_agent_protocol(service, smtp):
    mailbox, _ = smtp
    job_id = submit(service, [EMAIL], name="analysis")
    node_id, headers = add_node(service, state="ready")
    assign(service, [job_id], node_id)
    [claimed] = agent(service, "POST", "/claim?wait=0", headers).json()["jobs"]
    report = {"status": "completed", "execution": {"tasks": [{"exitCode": 0}]}}
    assert agent(service, "POST", f"/jobs/{job_id}/finish", headers, params={"attempt": claimed["attempt"]},
                 json=report).json() == {"accepted": True}

    sender, recipients, message = wait_until(lambda: mailbox.messages and mailbox.messages[0], what="the e-mail")[:3]
    assert sender == "batch@prominence.test" and recipients == ["alice@example.org"]
    assert message["To"] == "alice@example.org" and message["From"] == "batch@prominence.test"
    assert message["Subject"] == f"PROMINENCE job {job_id} (analysis) completed"
    text = message.get_content()
    assert f"Your job {job_id} (analysis) has finished: completed." in text and "Ended: " in text
    [delivery] = wait_until(lambda: [d for d in deliveries_of(service, job_id) if d.state == "sent"])
    assert message["Message-ID"] == f"<notification-{delivery.id}.job-{job_id}@prominence.test>"
    assert (delivery.kind, delivery.target, delivery.attempts) == ("email", "alice@example.org", 1)
    time.sleep(0.5)
    assert len(mailbox.messages) == 1  # once
    with service.client.app.state.engine.connect() as connection:
        assert connection.execute(select(jobs.c.notify_pending).where(jobs.c.id == job_id)).scalar_one() is False


def test_email_without_an_address_in_the_token_is_skipped_and_deleted_jobs_notify(sqlite_service, smtp):
    mailbox, _ = smtp
    silent = submit(sqlite_service, [EMAIL], email_address=None)
    told = submit(sqlite_service, [EMAIL], user="bob", email_address="bob@example.org")
    delete(sqlite_service, silent)
    delete(sqlite_service, told, user="bob")
    _, recipients, message = wait_until(lambda: mailbox.messages and mailbox.messages[0])
    assert recipients == ["bob@example.org"] and message["Subject"] == f"PROMINENCE job {told} deleted"
    assert "Reason: Job deleted by user" in message.get_content()
    [skipped] = deliveries_of(sqlite_service, silent)
    assert skipped.state == "skipped" and "no e-mail address" in skipped.last_error
    assert len(mailbox.messages) == 1


def test_email_is_skipped_when_no_smtp_server_is_configured(tmp_path):
    client, settings = notifying_api(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    with client:
        api = Api(client, settings)
        job_id = submit(api, [EMAIL])
        delete(api, job_id)
        [delivery] = wait_until(lambda: deliveries_of(api, job_id))
        assert delivery.state == "skipped" and "no SMTP server" in delivery.last_error


# -- webhooks -------------------------------------------------------------------------------------

def test_webhook_is_signed_with_the_users_secret(service, hooks):
    receiver = hooks()
    job_id = submit(service, [webhook(receiver.url + "?job=1")], name="hooked")
    delete(service, job_id)
    [(_, headers, body)] = wait_until(lambda: receiver.received, what="the webhook")
    secret = webhook_secret(service)
    assert len(secret) == 64 and secret != webhook_secret(service, "bob")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-prominence-signature"], expected)
    assert headers["content-type"] == "application/json" and headers["x-prominence-event"] == "jobFinished"
    sent = json.loads(body)
    assert sent["event"] == "jobFinished" and sent["deliveryId"] == int(headers["x-prominence-delivery"])
    assert (sent["id"], sent["name"], sent["status"], sent["statusReason"]) == (
        job_id, "hooked", "deleted", "Job deleted by user")
    assert set(sent["events"]) == {"createTime", "endTime"}
    [delivery] = wait_until(lambda: [d for d in deliveries_of(service, job_id) if d.state == "sent"])
    assert delivery.id == sent["deliveryId"]
    # The job's description shows the webhook, in /v1 and in GraphQL.
    [shown] = service.request("GET", f"/jobs/{job_id}").json()
    assert shown["notifications"] == [webhook(receiver.url + "?job=1")]
    query = {"query": "query ($id: ID!) { job(id: $id) { notifications { event type url } } }",
             "variables": {"id": str(job_id)}}
    answer = service.client.post("/graphql", headers=service.headers(), json=query).json()
    assert answer["data"]["job"]["notifications"] == [
        {"event": "JOB_FINISHED", "type": "WEBHOOK", "url": receiver.url + "?job=1"}]


def test_webhook_is_retried_with_exponential_backoff(sqlite_service, hooks):
    receiver = hooks()
    receiver.answers = [503, 500, 200]
    job_id = submit(sqlite_service, [webhook(receiver.url)])
    delete(sqlite_service, job_id)
    wait_until(lambda: len(receiver.received) == 3, what="three attempts")
    times = [at for at, _, _ in receiver.received]
    first_gap, second_gap = times[1] - times[0], times[2] - times[1]
    assert first_gap >= 0.18 and second_gap >= 0.38 and second_gap > first_gap * 1.5, (first_gap, second_gap)
    assert len({headers["x-prominence-delivery"] for _, headers, _ in receiver.received}) == 1
    [delivery] = wait_until(lambda: [d for d in deliveries_of(sqlite_service, job_id) if d.state == "sent"])
    assert delivery.attempts == 3


def test_webhook_is_given_up_after_its_attempts(sqlite_service, hooks):
    receiver = hooks()
    receiver.default = 500
    job_id = submit(sqlite_service, [webhook(receiver.url)])
    delete(sqlite_service, job_id)
    [delivery] = wait_until(lambda: [d for d in deliveries_of(sqlite_service, job_id) if d.state == "failed"])
    assert delivery.attempts == 4 and delivery.last_error == "HTTP 500"
    time.sleep(1)
    assert len(receiver.received) == 4


def test_dead_endpoints_hold_up_neither_submissions_nor_other_deliveries(tmp_path, hooks):
    client, settings = notifying_api(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", notify_timeout=6.0)
    silent, good = hooks(), hooks()
    silent.default = "hang"  # accepts the connection, reads the request, never answers
    refused = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there: connection refused
    with client:
        api = Api(client, settings)
        dead = submit(api, [webhook(silent.url)] * 8 + [webhook(refused)] * 2)
        delete(api, dead)
        wait_until(lambda: silent.received, what="the first request to the silent endpoint")
        started = time.monotonic()
        job_id = submit(api, [webhook(good.url)])
        assert time.monotonic() - started < 1.0  # submissions do not wait
        delete(api, job_id)
        wait_until(lambda: good.received, timeout=3, what="the good endpoint's webhook, while the others hang")
        assert time.monotonic() - started < 3.0
        assert len(silent.received) <= 2  # at most 2 attempts at once to one endpoint
        states = {d.target: d.last_error for d in deliveries_of(api, dead) if d.target == refused}
        assert any("onnect" in error for error in states.values()), states


def test_private_addresses_are_refused_unless_allowed(tmp_path, hooks, monkeypatch):
    client, settings = notifying_api(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", webhook_allow_private=False)
    receiver = hooks()
    with client:
        api = Api(client, settings)
        for url in ("http://127.0.0.1:8080/x", "http://169.254.169.254/latest/meta-data", "https://[::1]/x",
                    "http://10.1.2.3/x", "http://localhost:9000/x", "http://[::ffff:127.0.0.1]/x",
                    "http://0.0.0.0/x"):
            answer = api.request("POST", "/jobs", json=simple_job(notifications=[EMAIL, webhook(url)]))
            assert answer.status_code == 400, url
            assert answer.json()["error"].startswith("Invalid job description: notifications[1].url: "), answer.json()
        # A name that resolves to the metadata service's address is refused when it is sent: the
        # address connected to is the one checked.
        real = asyncio.BaseEventLoop.getaddrinfo

        async def resolve(self, host, *args, **kwargs):
            if host == "metadata.example.org":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))]
            return await real(self, host, *args, **kwargs)
        monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", resolve)
        job_id = submit(api, [webhook("http://metadata.example.org/latest/meta-data")])
        delete(api, job_id)
        [delivery] = wait_until(lambda: [d for d in deliveries_of(api, job_id) if d.state == "failed"])
        assert delivery.attempts == 1 and "169.254.169.254, not a public address" in delivery.last_error
        assert not receiver.received


@pytest.mark.parametrize(("notification", "field", "rule"), [
    ({"event": "jobFinished", "type": "webhook"}, "notifications[0].url", "is required for a webhook"),
    (webhook("ftp://example.org/x"), "notifications[0].url", "must be an http or https URL"),
    (webhook("https://"), "notifications[0].url", "must be an http or https URL"),
    (webhook("https://example.org/" + "a" * 2048), "notifications[0].url", "at most 2048 characters"),
    (webhook("https://exa mple.org/"), "notifications[0].url", "must not contain spaces"),
    (webhook("https://example.org:99999/"), "notifications[0].url", "must be an http or https URL"),
    ({**EMAIL, "url": "https://example.org/"}, "notifications[0].url", "is only for webhook"),
    ({"event": "jobFinished", "type": "sms"}, "notifications[0].type", "'email' or 'webhook'"),
    ({"event": "workflowFinished", "type": "email"}, "notifications[0].event", "jobFinished"),
    (webhook(17), "notifications[0].url", "string"),
])
def test_bad_notifications_are_refused_naming_the_field(api, notification, field, rule):
    answer = api.request("POST", "/jobs", json=simple_job(notifications=[notification]))
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(f"Invalid job description: {field}: "), answer.json()
    assert rule in answer.json()["error"]


def test_too_many_notifications_are_refused(api):
    answer = api.request("POST", "/jobs", json=simple_job(notifications=[EMAIL] * 11))
    assert answer.status_code == 400 and "notifications: list should have at most 10 items" in answer.json()["error"]


def test_graphql_create_job_refuses_a_bad_webhook(api):
    mutation = {"query": "mutation ($input: JSON!) { createJob(input: $input) { id } }",
                "variables": {"input": simple_job(notifications=[webhook("gopher://x")])}}
    answer = api.client.post("/graphql", headers=api.headers(), json=mutation).json()
    assert "notifications[0].url: must be an http or https URL" in answer["errors"][0]["message"]


# -- a crash ----------------------------------------------------------------------------------------

def test_notifications_survive_kill_9_at_least_once(tmp_path, hooks):
    receiver = hooks()
    receiver.answers = ["hang"]  # the first attempt is in flight when the server dies
    database = f"sqlite:///{tmp_path / 'state.db'}"
    options = ("--webhook-allow-private", "--notify-timeout", "2", "--notify-backoff", "0.2")
    server = LiveServer(tmp_path / "data", database, extra_args=options).start()
    try:
        token = server.token("alice", "--email", "alice@example.org")
        http = httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        first = http.post("/jobs", json=simple_job(notifications=[webhook(receiver.url)])).json()["id"]
        assert http.delete(f"/jobs/{first}").status_code == 200
        wait_until(lambda: receiver.received, what="the first attempt")
        second = http.post("/jobs", json=simple_job(notifications=[webhook(receiver.url + "?second")])).json()["id"]
        assert http.delete(f"/jobs/{second}").status_code == 200
        server.kill()  # whichever step the second job's notification was at, and the first's in flight
        receiver.release.set()
        server.start()
        wait_until(lambda: {json.loads(body)["id"] for _, _, body in receiver.received} == {first, second},
                   timeout=30, what="both notifications after the restart")
        engine = make_engine(database)
        try:
            def sent() -> list:
                with engine.connect() as connection:
                    return connection.execute(select(notification_deliveries.c.subject_id).where(
                        notification_deliveries.c.state == "sent")).scalars().all()
            assert sorted(wait_until(lambda: len(sent()) == 2 and sent())) == [first, second]
            # The first one was sent again (at least once), under the same delivery id.
            firsts = [headers["x-prominence-delivery"] for _, headers, body in receiver.received
                      if json.loads(body)["id"] == first]
            assert len(firsts) >= 2 and len(set(firsts)) == 1
            # Finished jobs still waiting to be moved to the outbox (as after a crash between a
            # job's end and that step) are found after a restart too.
            server.stop()
            with engine.begin() as connection:
                connection.execute(update(jobs).where(jobs.c.id == second).values(notify_pending=True))
                connection.execute(notification_deliveries.delete().where(
                    notification_deliveries.c.subject_id == second))
            count = len(receiver.received)
            server.start()
            wait_until(lambda: len(receiver.received) > count, timeout=30, what="the redone notification")
            assert json.loads(receiver.received[-1][2])["id"] == second
        finally:
            engine.dispose()
    finally:
        server.stop()
