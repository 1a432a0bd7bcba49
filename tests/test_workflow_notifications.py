"""Notifications of workflows (gateway/services/notify.py, docs/api-decisions.md "Notifications"):
the `jobFinished` of a workflow's jobs (also those the engine creates later: factory instances,
retries, a re-run's jobs) and the workflow's own `workflowFinished`, by e-mail (aiosmtpd) and signed
webhook; at least once across a kill -9; bad inputs refused with a 400 naming the field. Jobs reach
their end through the agent protocol or by direct updates, as tests/test_workflows.py does; the
engine (schema/workflowrun.py) is stepped by hand, as the provisioner's tick does."""
import hashlib
import hmac
import json
import time

import httpx
import pytest
from sqlalchemy import select, update

from schema import workflowrun
from schema.db import make_engine
from schema.tables import jobs, notification_deliveries, workflows
from tests import test_notifications
from tests.conftest import Api
from tests.live import LiveServer
from tests.test_agent_protocol import add_node, agent, assign
from tests.test_notifications import (
    EMAIL,
    notifying_api,
    wait_until,
    webhook,
    webhook_secret,
)
from tests.test_workflows import finish, job, wf_jobs, workflow

# The receivers (aiosmtpd, a webhook server) and the notifying service of tests/test_notifications.py.
smtp, hooks = test_notifications.smtp, test_notifications.hooks
service, sqlite_service = test_notifications.service, test_notifications.sqlite_service

pytestmark = pytest.mark.timeout(120)

WF_EMAIL = {"event": "workflowFinished", "type": "email"}


def wf_webhook(url: str) -> dict:
    return {"event": "workflowFinished", "type": "webhook", "url": url}


def submit_workflow(api: Api, spec: dict, user: str = "alice", email_address: str | None = "alice@example.org") -> int:
    headers = api.headers(user, **({"email": email_address} if email_address else {}))
    response = api.client.post("/v1/workflows", headers=headers, json=spec)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def advance(api: Api) -> None:
    workflowrun.advance(api.client.app.state.engine, int(time.time()))


def deliveries(api: Api, subject: str, subject_id: int) -> list:
    with api.client.app.state.engine.connect() as connection:
        return connection.execute(select(notification_deliveries).where(
            notification_deliveries.c.subject == subject, notification_deliveries.c.subject_id == subject_id)
            .order_by(notification_deliveries.c.seq)).all()


def signed(api: Api, headers: dict, body: bytes, user: str = "alice") -> bool:
    expected = "sha256=" + hmac.new(webhook_secret(api, user).encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-prominence-signature"], expected)


def received(receiver) -> list[dict]:
    return [json.loads(body) for _, _, body in receiver.received]


def test_a_workflows_jobs_and_the_workflow_notify_by_email_and_webhook(service, smtp, hooks):
    mailbox, _ = smtp
    job_hooks, wf_hooks = hooks(), hooks()
    spec = {"name": "wfn",
            "jobs": [job("a", notifications=[EMAIL, webhook(job_hooks.url)]),
                     job("s", "echo $x", notifications=[webhook(job_hooks.url + "?s")]),
                     job("quiet")],
            "dependencies": {"a": ["s"]},
            "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["s"],
                           "parameters": [{"name": "x", "start": 1, "end": 3, "step": 1}]}],
            "policies": {"maximumRetries": 1},
            "notifications": [WF_EMAIL, wf_webhook(wf_hooks.url)]}
    workflow_id = submit_workflow(service, spec)
    with service.client.app.state.engine.connect() as connection:
        row = connection.execute(select(workflows.c.notify_pending, workflows.c.notify_email).where(
            workflows.c.id == workflow_id)).one()
    assert (row.notify_pending, row.notify_email) == (True, "alice@example.org")
    listed = wf_jobs(service, workflow_id)
    assert sorted(listed) == ["wfn/a", "wfn/quiet"]  # the sweep's instances come later (they depend on a)

    # a ends through the agent protocol.
    a = listed["wfn/a"]["id"]
    node_id, headers = add_node(service, state="ready")
    assign(service, [a], node_id)
    [claimed] = agent(service, "POST", "/claim?wait=0", headers).json()["jobs"]
    assert agent(service, "POST", f"/jobs/{a}/finish", headers, params={"attempt": claimed["attempt"]},
                 json={"status": "completed", "execution": {"tasks": [{"exitCode": 0}]}}).json() == {"accepted": True}
    _, recipients, message = wait_until(lambda: mailbox.messages and mailbox.messages[0], what="a's e-mail")
    assert recipients == ["alice@example.org"] and message["Subject"] == f"PROMINENCE job {a} (wfn/a) completed"
    wait_until(lambda: [b for b in received(job_hooks) if b["id"] == a], what="a's webhook")

    # The engine, later and without the submitter's token, makes the sweep's instances and a retry.
    advance(service)
    instances = {name: j["id"] for name, j in wf_jobs(service, workflow_id).items() if name.startswith("wfn/s/")}
    assert sorted(instances) == ["wfn/s/0", "wfn/s/1", "wfn/s/2"]
    with service.client.app.state.engine.connect() as connection:
        columns = connection.execute(select(jobs.c.name, jobs.c.notify_pending, jobs.c.notify_email).where(
            jobs.c.workflow_id == workflow_id)).all()
    assert {c.name: (c.notify_pending, c.notify_email) for c in columns} == {
        "wfn/a": (False, "alice@example.org"), "wfn/quiet": (False, None),
        "wfn/s/0": (True, None), "wfn/s/1": (True, None), "wfn/s/2": (True, None)}
    finish(service, instances["wfn/s/0"], "failed")
    retry = max(j["id"] for j in service.request("GET", f"/jobs?workflow=true&id={workflow_id}").json()
                if j["name"] == "wfn/s/0")
    assert retry != instances["wfn/s/0"]
    for job_id in (retry, instances["wfn/s/1"], instances["wfn/s/2"], listed["wfn/quiet"]["id"]):
        finish(service, job_id)
    assert workflow(service, workflow_id)["status"] == "completed"

    # jobFinished of every instance and attempt that asked for it (quiet did not).
    expected = {instances["wfn/s/0"]: "failed", retry: "completed", instances["wfn/s/1"]: "completed",
                instances["wfn/s/2"]: "completed", a: "completed"}
    wait_until(lambda: {b["id"]: b["status"] for b in received(job_hooks)} == expected, what="the jobs' webhooks")
    for _, headers, body in job_hooks.received:
        assert signed(service, headers, body) and headers["x-prominence-event"] == "jobFinished"

    # workflowFinished: a signed webhook and an e-mail, with the jobs' counts.
    [(_, headers, body)] = wait_until(lambda: wf_hooks.received, what="the workflow's webhook")
    assert signed(service, headers, body) and headers["x-prominence-event"] == "workflowFinished"
    sent = json.loads(body)
    assert sent["event"] == "workflowFinished" and sent["deliveryId"] == int(headers["x-prominence-delivery"])
    assert (sent["id"], sent["name"], sent["status"]) == (workflow_id, "wfn", "completed")
    assert sent["progress"] == {"total": 5, "done": 5, "failed": 0, "queued": 0, "waiting": 0}
    assert sent["progress"] == workflow(service, workflow_id)["progress"]
    assert set(sent["events"]) == {"createTime", "startTime", "endTime"}
    subject = f"PROMINENCE workflow {workflow_id} (wfn) completed"
    _, recipients, message = wait_until(
        lambda: next((m for m in mailbox.messages if m[2]["Subject"] == subject), None), what="the workflow's e-mail")
    assert recipients == ["alice@example.org"] and message["X-Prominence-Event"] == "workflowFinished"
    text = message.get_content()
    assert f"Your workflow {workflow_id} (wfn) has finished: completed." in text
    assert "Jobs: 5 in all, 5 completed successfully, 0 failed, 0 not run or stopped" in text
    sent_rows = wait_until(lambda: [d for d in deliveries(service, "workflow", workflow_id) if d.state == "sent"]
                           if len(deliveries(service, "workflow", workflow_id)) == 2 and all(
                               d.state == "sent" for d in deliveries(service, "workflow", workflow_id)) else None)
    assert [(d.kind, d.event) for d in sent_rows] == [("email", "workflowFinished"), ("webhook", "workflowFinished")]
    assert message["Message-ID"] == f"<notification-{sent_rows[0].id}.workflow-{workflow_id}@prominence.test>"
    time.sleep(0.5)
    assert len(wf_hooks.received) == 1 and len([m for m in mailbox.messages if m[2]["Subject"] == subject]) == 1
    with service.client.app.state.engine.connect() as connection:
        assert connection.execute(select(workflows.c.notify_pending).where(
            workflows.c.id == workflow_id)).scalar_one() is False


def test_failed_rerun_and_deleted_workflows_notify(sqlite_service, smtp, hooks):
    api = sqlite_service
    receiver = hooks()
    spec = {"name": "chain", "jobs": [job("a"), job("b", notifications=[webhook(receiver.url + "?job")])],
            "dependencies": {"a": ["b"]}, "notifications": [wf_webhook(receiver.url)]}
    workflow_id = submit_workflow(api, spec)
    ids = {name.split("/")[1]: j["id"] for name, j in wf_jobs(api, workflow_id).items()}
    finish(api, ids["a"], exit_code=1)  # b is never run: it ends failed, and says so
    assert workflow(api, workflow_id)["status"] == "failed"
    wait_until(lambda: len(receiver.received) == 2, what="two webhooks")
    by_event = {b["event"]: b for b in received(receiver)}
    assert (by_event["jobFinished"]["id"], by_event["jobFinished"]["status"],
            by_event["jobFinished"]["statusReason"]) == (ids["b"], "failed", workflowrun.NOT_RUN)
    failed = by_event["workflowFinished"]
    assert (failed["id"], failed["status"], failed["statusReason"]) == (
        workflow_id, "failed", "Some jobs of the workflow did not complete successfully")
    assert failed["progress"] == {"total": 2, "done": 0, "failed": 1, "queued": 0, "waiting": 1}

    # A re-run is a new workflow: it notifies for itself, and its jobs for themselves.
    response = api.request("PUT", f"/workflows/{workflow_id}", user="bob")
    assert response.status_code in (400, 403)  # another user's: not a way to get someone's notifications
    response = api.request("PUT", f"/workflows/{workflow_id}")
    assert response.status_code == 200, response.text
    rerun = response.json()["id"]
    new = {name.split("/")[1]: j["id"] for name, j in wf_jobs(api, rerun).items()}
    finish(api, new["a"])
    finish(api, new["b"])
    assert workflow(api, rerun)["status"] == "completed"
    wait_until(lambda: {(b["event"], b["id"]) for b in received(receiver)} >= {
        ("jobFinished", new["b"]), ("workflowFinished", rerun)}, what="the re-run's webhooks")

    # A deleted workflow notifies at once (no tick needed), and so do its jobs that asked to.
    deleted = submit_workflow(api, spec)
    assert api.request("DELETE", f"/workflows/{deleted}").json() == {}
    wait_until(lambda: [b for b in received(receiver) if b["event"] == "workflowFinished" and b["id"] == deleted],
               what="the deleted workflow's webhook")
    [gone] = [b for b in received(receiver) if b["event"] == "workflowFinished" and b["id"] == deleted]
    assert (gone["status"], gone["statusReason"]) == ("deleted", workflowrun.WORKFLOW_DELETED)
    assert gone["progress"]["total"] == 2 and gone["progress"]["done"] == 0
    wait_until(lambda: [b for b in received(receiver) if b["event"] == "jobFinished" and b["status"] == "deleted"],
               what="its job's webhook")


def test_workflow_email_is_skipped_without_an_address(sqlite_service, smtp, hooks):
    mailbox, _ = smtp
    workflow_id = submit_workflow(sqlite_service, {"name": "w", "jobs": [job("a", notifications=[EMAIL])],
                                                   "notifications": [WF_EMAIL]}, email_address=None)
    assert sqlite_service.request("DELETE", f"/workflows/{workflow_id}").json() == {}
    [skipped] = wait_until(lambda: deliveries(sqlite_service, "workflow", workflow_id), what="the delivery")
    assert skipped.state == "skipped" and "no e-mail address" in skipped.last_error
    [job_id] = [j["id"] for j in wf_jobs(sqlite_service, workflow_id).values()]
    [job_skipped] = wait_until(lambda: deliveries(sqlite_service, "job", job_id), what="the job's delivery")
    assert job_skipped.state == "skipped"
    assert not mailbox.messages


def test_a_jobs_email_alone_keeps_the_address_for_the_jobs_made_later(api):
    spec = {"name": "w", "jobs": [job("a"), job("s", notifications=[EMAIL])], "dependencies": {"a": ["s"]},
            "factories": [{"type": "repeat", "name": "f", "jobs": ["s"], "number": 2}]}
    workflow_id = submit_workflow(api, spec)
    with api.client.app.state.engine.connect() as connection:
        row = connection.execute(select(workflows.c.notify_pending, workflows.c.notify_email).where(
            workflows.c.id == workflow_id)).one()
    assert (row.notify_pending, row.notify_email) == (False, "alice@example.org")  # no workflowFinished
    finish(api, wf_jobs(api, workflow_id)["w/a"]["id"])
    with api.client.app.state.engine.connect() as connection:
        made = connection.execute(select(jobs.c.name, jobs.c.notify_pending, jobs.c.notify_email).where(
            jobs.c.workflow_id == workflow_id, jobs.c.wf_job == "s")).all()
    assert sorted(made) == [("w/s/0", True, "alice@example.org"), ("w/s/1", True, "alice@example.org")]


@pytest.mark.parametrize(("notifications", "field", "rule"), [
    ([{"event": "workflowFinished", "type": "webhook"}], "notifications[0].url", "is required for a webhook"),
    ([wf_webhook("ftp://example.org/x")], "notifications[0].url", "must be an http or https URL"),
    ([wf_webhook("https://exa mple.org/")], "notifications[0].url", "must not contain spaces"),
    ([{**WF_EMAIL, "url": "https://example.org/"}], "notifications[0].url", "is only for webhook"),
    ([{"event": "workflowFinished", "type": "sms"}], "notifications[0].type", "'email' or 'webhook'"),
    ([{"event": "jobFinished", "type": "email"}], "notifications[0].event", "workflowFinished"),
    ([WF_EMAIL, wf_webhook(17)], "notifications[1].url", "string"),
    ([WF_EMAIL] * 11, "notifications", "at most 10 items"),
])
def test_bad_workflow_notifications_are_refused_naming_the_field(api, notifications, field, rule):
    answer = api.request("POST", "/workflows", json={"name": "w", "jobs": [job("a")], "notifications": notifications})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(f"Invalid workflow description: {field}: "), answer.json()
    assert rule in answer.json()["error"]


def test_bad_notifications_of_a_workflows_job_are_refused_naming_the_field(api):
    for notification, field, rule in (
            (WF_EMAIL, "jobs[1].notifications[0].event", "jobFinished"),
            (webhook("gopher://x"), "jobs[1].notifications[0].url", "must be an http or https URL")):
        answer = api.request("POST", "/workflows", json={"jobs": [job("a"), job("b", notifications=[notification])]})
        assert answer.status_code == 400
        assert answer.json()["error"].startswith(f"Invalid workflow description: {field}: "), answer.json()
        assert rule in answer.json()["error"]
    mutation = {"query": "mutation ($input: JSON!) { createWorkflow(input: $input) { id } }",
                "variables": {"input": {"jobs": [job("a")], "notifications": [wf_webhook("gopher://x")]}}}
    answer = api.client.post("/graphql", headers=api.headers(), json=mutation).json()
    assert "notifications[0].url: must be an http or https URL" in answer["errors"][0]["message"], answer


def test_private_webhook_addresses_of_workflows_are_refused(tmp_path):
    client, settings = notifying_api(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", webhook_allow_private=False)
    with client:
        api = Api(client, settings)
        for spec, field in (
                ({"jobs": [job("a")], "notifications": [WF_EMAIL, wf_webhook("http://169.254.169.254/x")]},
                 "notifications[1].url"),
                ({"jobs": [job("a"), job("b", notifications=[webhook("http://127.0.0.1:8080/x")])]},
                 "jobs[1].notifications[0].url")):
            answer = api.request("POST", "/workflows", json=spec)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"].startswith(f"Invalid workflow description: {field}: "), answer.json()
            assert "is not a public address" in answer.json()["error"]
        assert api.request("GET", "/workflows?all=true").json() == []


def test_workflow_notifications_survive_kill_9_at_least_once(tmp_path, hooks):
    receiver = hooks()
    receiver.answers = ["hang"]  # the first attempt is in flight when the server dies
    database = f"sqlite:///{tmp_path / 'state.db'}"
    options = ("--webhook-allow-private", "--notify-timeout", "2", "--notify-backoff", "0.2")
    server = LiveServer(tmp_path / "data", database, extra_args=options).start()
    spec = {"name": "w", "jobs": [job("a")], "notifications": [wf_webhook(receiver.url)]}
    try:
        token = server.token("alice", "--email", "alice@example.org")
        http = httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        first = http.post("/workflows", json=spec).json()["id"]
        assert http.delete(f"/workflows/{first}").status_code == 200
        wait_until(lambda: receiver.received, what="the first attempt")
        second = http.post("/workflows", json={**spec, "name": "w2"}).json()["id"]
        assert http.delete(f"/workflows/{second}").status_code == 200
        server.kill()  # whichever step the second workflow's notification was at, and the first's in flight
        receiver.release.set()
        server.start()
        wait_until(lambda: {b["id"] for b in received(receiver)} == {first, second}, timeout=30,
                   what="both notifications after the restart")
        engine = make_engine(database)
        try:
            def sent() -> list:
                with engine.connect() as connection:
                    return connection.execute(select(notification_deliveries.c.subject_id).where(
                        notification_deliveries.c.subject == "workflow",
                        notification_deliveries.c.state == "sent")).scalars().all()
            assert sorted(wait_until(lambda: len(sent()) == 2 and sent())) == [first, second]
            firsts = [headers["x-prominence-delivery"] for _, headers, body in receiver.received
                      if json.loads(body)["id"] == first]
            assert len(firsts) >= 2 and len(set(firsts)) == 1  # sent again, under the same delivery id
            assert all(json.loads(body)["event"] == "workflowFinished" for _, _, body in receiver.received)
            # A finished workflow not yet moved to the outbox (a crash between its end and that
            # step) is found after a restart too.
            server.stop()
            with engine.begin() as connection:
                connection.execute(update(workflows).where(workflows.c.id == second).values(notify_pending=True))
                connection.execute(notification_deliveries.delete().where(
                    notification_deliveries.c.subject == "workflow", notification_deliveries.c.subject_id == second))
            count = len(receiver.received)
            server.start()
            wait_until(lambda: len(receiver.received) > count, timeout=30, what="the redone notification")
            assert json.loads(receiver.received[-1][2])["id"] == second
        finally:
            engine.dispose()
    finally:
        server.stop()
