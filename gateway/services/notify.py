"""Notifications: an e-mail or a signed webhook when a job or a workflow has finished.

How a notification travels, and why it is neither lost nor sent twice in the usual case
(docs/api-decisions.md, "Notifications"):

1. Submission copies what is needed into the job's row, in the transaction that stores the job:
   `notify_pending` (the description asks for notifications) and `notify_email` (the address in
   the submitter's token, which is gone when the job ends). A workflow's row gets the same two
   columns (for its `workflowFinished`); its jobs, created then or later by the engine
   (schema/workflowrun.py: factory instances, retries, re-runs), get theirs from their own
   `notifications` and the workflow row's address.
2. Many paths end a job (the agent's report, a delete, the provisioner failing it, a lost node
   with no retries left, ...), some in another process. None of them knows about notifications:
   this sender finds finished jobs with `notify_pending` (a partial index holds only those rows)
   every second, or at once when this process's jobs-changed signal fires. In one transaction it
   clears `notify_pending` and writes one row per notification into the outbox
   (`notification_deliveries`), with the job's final state as the payload. The UPDATE ... WHERE
   notify_pending guards that step: two senders (two gateways on one PostgreSQL) never both move
   a job.
3. Deliveries are claimed from the outbox with a lease (`next_attempt_at` moved past the
   attempt's deadline, `attempts` + 1) and sent in their own asyncio tasks, at most
   MAX_IN_FLIGHT at once and MAX_PER_HOST per webhook host, each attempt bounded by
   `notify_timeout`. Then the row becomes `sent`, or is due again after an exponential backoff, or
   `failed` once its attempts are spent (or the failure cannot get better: a refused address).

A crash (kill -9) anywhere leaves either the job's `notify_pending` set (step 2 redone) or the
delivery `pending` with its lease running out (step 3 redone): every notification is sent at least
once. It is sent twice only when the crash falls between its sending and the recording of that:
receivers can tell by the delivery id, the same in every attempt (`X-Prominence-Delivery`, and the
e-mail's Message-ID).

Submissions, the scheduler and the agent protocol never wait for any of this: the sender runs in
its own task, its database work in one thread of its own.
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import smtplib
import socket
import ssl
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import httpx
from anyio import CapacityLimiter, to_thread
from sqlalchemy import Engine, Row, Table, func, insert, select, update

from schema.db import reading
from schema.errors import InvalidInput
from schema.identity import Identity
from schema.jobspec import JobSpec
from schema.signals import Signal, wait_for_event
from schema.tables import jobs, workflows
from schema.tables import notification_deliveries as deliveries
from schema.workflowrun import progress_of
from schema.workflowspec import WorkflowSpec

log = logging.getLogger("prominence.notify")

MAX_IN_FLIGHT = 8  # deliveries being sent at once
MAX_PER_HOST = 2  # of them to one webhook host and port: a dead endpoint holds at most this many slots
MAX_BACKOFF_S = 3600.0
POLL_S = 1.0  # how often the database is looked at without a signal (other processes end jobs too)
BATCH = 200  # finished jobs moved to the outbox per transaction
SIGNATURE_HEADER = "X-Prominence-Signature"
DELIVERY_HEADER = "X-Prominence-Delivery"
EVENT_HEADER = "X-Prominence-Event"
_ADDRESS = re.compile(r"[^@\s<>,;:\"()\[\]\\\x00-\x1f\x7f]{1,200}@[A-Za-z0-9.-]{1,200}")


def webhook_secret(server_secret: bytes, username: str) -> str:
    """The key that signs a user's webhooks: derived from the server's secret and the username,
    so it needs no storage; it changes only when the server's secret does."""
    return hmac.new(server_secret, b"prominence-webhook-secret\x00" + username.encode(), hashlib.sha256).hexdigest()


def signature(secret: str, body: bytes) -> str:
    """The `X-Prominence-Signature` value of a webhook body: `sha256=<hex HMAC-SHA256 of the body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def non_public(address: str) -> bool:
    """Loopback, private, link-local (169.254.169.254, clouds' metadata service), shared, reserved,
    multicast or unspecified: what a webhook must not reach unless the admin allows it."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _address(identity: Identity) -> str | None:
    email = identity.email
    return email if isinstance(email, str) and _ADDRESS.fullmatch(email) else None


def _wants_email(notifications) -> bool:
    return any(n.type == "email" for n in notifications or ())


def submission_columns(identity: Identity, spec: JobSpec) -> dict[str, Any]:
    """What a job's row records at submission for its notifications (tables.Job.notify_*)."""
    return {"notify_pending": bool(spec.notifications),
            "notify_email": _address(identity) if _wants_email(spec.notifications) else None}


def workflow_submission_columns(identity: Identity, spec: WorkflowSpec) -> dict[str, Any]:
    """What a workflow's row records at submission (tables.Workflow.notify_*): pending when it asks
    for `workflowFinished`; the submitter's address when it or any of its jobs asks for e-mail
    (its jobs' rows copy it as they are created, maybe long after the submitter's token is gone)."""
    email = _wants_email(spec.notifications) or any(_wants_email(job.notifications) for job in spec.jobs)
    return {"notify_pending": bool(spec.notifications), "notify_email": _address(identity) if email else None}


@dataclass(frozen=True)
class Source:
    """A kind of thing that finishes and notifies: its table has `id`, `owner`, `spec` (with
    `notifications`), `end_time` (set when it finished), `notify_pending` and `notify_email`:
    jobs (`jobFinished`) and workflows (`workflowFinished`)."""

    subject: str
    event: str
    table: Table
    columns: tuple[str, ...]
    payload: Callable[[Row], dict[str, Any]]


def _job_payload(row: Row) -> dict[str, Any]:
    events = {"createTime": row.create_time}
    if row.start_time is not None:
        events["startTime"] = row.start_time
    events["endTime"] = row.end_time
    return {"id": row.id, "name": row.name, "status": row.status, "statusReason": row.status_reason,
            "events": events}


def _workflow_payload(row: Row) -> dict[str, Any]:
    """`progress` as GET /v1/workflows shows it (reference 4.3): nothing is queued any more."""
    return {**_job_payload(row), "progress": progress_of(row.state, {}, row.total)}


JOB_SOURCE = Source("job", "jobFinished", jobs,
                    ("id", "owner", "name", "status", "status_reason", "spec", "create_time", "start_time",
                     "end_time", "notify_email"), _job_payload)
WORKFLOW_SOURCE = Source("workflow", "workflowFinished", workflows,
                         ("id", "owner", "name", "status", "status_reason", "spec", "create_time", "start_time",
                          "end_time", "notify_email", "state", "total"), _workflow_payload)
SOURCES: list[Source] = [JOB_SOURCE, WORKFLOW_SOURCE]


@dataclass(frozen=True)
class NotifyConfig:
    server_secret: bytes
    smtp_url: str | None = None
    mail_from: str | None = None
    allow_private: bool = False
    timeout: float = 10.0
    attempts: int = 8
    backoff: float = 30.0

    @classmethod
    def of(cls, settings) -> NotifyConfig:
        return cls(settings.secret, settings.smtp_url, settings.mail_from, settings.webhook_allow_private,
                   settings.notify_timeout, settings.notify_attempts, settings.notify_backoff)

    @property
    def lease(self) -> float:
        """How long a claimed delivery is left alone: past it, the sender is taken to have died."""
        return 2 * self.timeout + 5


class _Failure(Exception):
    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class Notifier:
    def __init__(self, engine: Engine, config: NotifyConfig, wake: Signal | None = None):
        self._engine = engine
        self._config = config
        self._wake = wake or Signal()
        self._db = CapacityLimiter(1)  # its own thread for the database: never the requests' ones
        self._in_flight: dict[int, str] = {}  # delivery id -> host it goes to
        self._tasks: set[asyncio.Task] = set()
        self._main: asyncio.Task | None = None
        self._kick: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender = config.mail_from or f"prominence@{socket.getfqdn() or 'localhost'}"

    # -- what the API uses -----------------------------------------------------------------------

    def webhook_secret(self, username: str) -> str:
        return webhook_secret(self._config.server_secret, username)

    def check_spec(self, spec: JobSpec) -> None:
        """At submission: webhook URLs whose host is written as a non-public address (or is
        `localhost`) are refused now, unless allowed; names are checked when they are resolved."""
        self._check_urls(spec.notifications, "Invalid job description: notifications")

    def check_workflow(self, spec: WorkflowSpec) -> None:
        """check_spec() for a workflow's notifications and each of its jobs'."""
        self._check_urls(spec.notifications, "Invalid workflow description: notifications")
        for number, job in enumerate(spec.jobs):
            self._check_urls(job.notifications, f"Invalid workflow description: jobs[{number}].notifications")

    def _check_urls(self, notifications, field: str) -> None:
        if self._config.allow_private:
            return
        for i, notification in enumerate(notifications or ()):
            if notification.type != "webhook":
                continue
            host = urllib.parse.urlsplit(notification.url).hostname or ""
            try:
                refused = non_public(host)
            except ValueError:
                refused = host == "localhost" or host.endswith(".localhost")
            if refused:
                raise InvalidInput(f"{field}[{i}].url: {host} is not a public "
                                   "address (loopback, private and link-local addresses are refused)")

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = self._loop.create_task(self._run(), name="notifier")

    async def stop(self) -> None:
        """Stops at once: deliveries in flight are cancelled and their leases run out, so they are
        sent again by the next start (at least once)."""
        for task in [self._main, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._main, *self._tasks] if t is not None), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            with self._wake.listener() as woken:
                self._kick = woken
                try:
                    await to_thread.run_sync(self._transfer, limiter=self._db)
                    wait = await self._dispatch()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("notifications: a round failed; trying again")
                    wait = POLL_S
                await wait_for_event(woken, wait)

    # -- step 2: finished jobs (and workflows) into the outbox -----------------------------------

    def _transfer(self) -> None:
        for source in SOURCES:
            while self._transfer_batch(source) == BATCH:
                pass

    def _transfer_batch(self, source: Source) -> int:
        table = source.table
        finished = [table.c.notify_pending.is_(True), table.c.end_time.is_not(None)]
        with reading(self._engine) as connection:  # the common case, nothing to do, takes no write lock
            ids = connection.execute(
                select(table.c.id).where(*finished).order_by(table.c.id).limit(BATCH)).scalars().all()
        if not ids:
            return 0
        now = time.time()
        with self._engine.begin() as connection:
            rows = connection.execute(update(table).where(table.c.id.in_(ids), *finished).values(notify_pending=False)
                                      .returning(*(table.c[name] for name in source.columns))).all()
            outbox = [delivery for row in rows for delivery in self._deliveries(source, row, now)]
            if outbox:
                connection.execute(insert(deliveries), outbox)
        return len(ids)

    def _deliveries(self, source: Source, row: Row, now: float) -> list[dict[str, Any]]:
        payload = source.payload(row)
        made = []
        for seq, notification in enumerate(row.spec.get("notifications") or ()):
            if notification.get("event") != source.event:
                continue
            kind = notification.get("type")
            target, skipped = notification.get("url") or "", ""
            if kind == "email":
                target = row.notify_email or ""
                if not target:
                    skipped = "the submitter's token had no e-mail address"
                elif not self._config.smtp_url:
                    skipped = "no SMTP server is configured (serve --smtp-url)"
            made.append({"subject": source.subject, "subject_id": row.id, "seq": seq, "event": source.event,
                         "owner": row.owner, "kind": kind, "target": target, "payload": payload,
                         "state": "skipped" if skipped else "pending", "attempts": 0, "next_attempt_at": now,
                         "last_error": skipped, "created_at": now, "sent_at": None})
        return made

    # -- step 3: sending -------------------------------------------------------------------------

    def _kinds(self) -> list[str]:
        return ["webhook", "email"] if self._config.smtp_url else ["webhook"]

    async def _dispatch(self) -> float:
        """Claims what is due, as far as slots allow, and starts sending it; returns how long to
        wait before looking again."""
        free = MAX_IN_FLIGHT - len(self._in_flight)
        if free <= 0:
            return POLL_S
        claimed, wait = await to_thread.run_sync(self._claim, free, Counter(self._in_flight.values()),
                                                 limiter=self._db)
        for row in claimed:
            self._in_flight[row.id] = _host(row)
            task = asyncio.get_running_loop().create_task(self._deliver(row), name=f"notification-{row.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return wait

    def _claim(self, free: int, per_host: Counter) -> tuple[list[Row], float]:
        now = time.time()
        due = [deliveries.c.state == "pending", deliveries.c.kind.in_(self._kinds())]
        with reading(self._engine) as connection:
            candidates = connection.execute(
                select(deliveries.c.id, deliveries.c.kind, deliveries.c.target)
                .where(*due, deliveries.c.next_attempt_at <= now)
                .order_by(deliveries.c.next_attempt_at).limit(MAX_IN_FLIGHT * 8)).all()
            later = None if candidates else connection.execute(
                select(func.min(deliveries.c.next_attempt_at)).where(*due)).scalar()
        chosen = []
        for candidate in candidates:
            host = _host(candidate)
            if candidate.id in self._in_flight or per_host[host] >= (MAX_PER_HOST if candidate.kind == "webhook"
                                                                        else MAX_IN_FLIGHT):
                continue
            per_host[host] += 1
            chosen.append(candidate.id)
            if len(chosen) == free:
                break
        wait = POLL_S if later is None else max(0.05, min(POLL_S, later - now))
        if not chosen:
            return [], wait
        with self._engine.begin() as connection:
            rows = connection.execute(
                update(deliveries).where(deliveries.c.id.in_(chosen), *due, deliveries.c.next_attempt_at <= now)
                .values(next_attempt_at=now + self._config.lease, attempts=deliveries.c.attempts + 1)
                .returning(*deliveries.c)).all()
        return rows, (POLL_S if len(candidates) < MAX_IN_FLIGHT * 8 else 0.05)

    async def _deliver(self, row: Row) -> None:
        error: _Failure | None = None
        try:
            async with asyncio.timeout(self._config.timeout):
                if row.kind == "webhook":
                    await self._post(row)
                else:
                    await to_thread.run_sync(self._mail, row, abandon_on_cancel=True)
        except _Failure as failure:
            error = failure
        except TimeoutError:
            error = _Failure(f"no answer within {self._config.timeout:g} s")
        except (httpx.HTTPError, OSError, smtplib.SMTPException) as failure:
            error = _Failure(f"{type(failure).__name__}: {failure}"[:500])
        except Exception as failure:  # a bug here must not stop the sender
            log.exception("notification %s: unexpected error", row.id)
            error = _Failure(f"{type(failure).__name__}", permanent=True)
        try:
            await to_thread.run_sync(self._record, row, error, limiter=self._db)
        finally:
            self._in_flight.pop(row.id, None)
            self._kick_soon()

    def _record(self, row: Row, error: _Failure | None) -> None:
        now = time.time()
        if error is None:
            values = {"state": "sent", "sent_at": now, "last_error": ""}
        elif error.permanent or row.attempts >= self._config.attempts:
            values = {"state": "failed", "last_error": str(error)}
            log.warning("notification %s (%s %s of %s %s) given up after %s attempt(s): %s", row.id, row.kind,
                        row.event, row.subject, row.subject_id, row.attempts, error)
        else:
            delay = min(MAX_BACKOFF_S, self._config.backoff * 2 ** (row.attempts - 1))
            values = {"next_attempt_at": now + delay, "last_error": str(error)}
        with self._engine.begin() as connection:
            connection.execute(update(deliveries).where(deliveries.c.id == row.id, deliveries.c.state == "pending")
                               .values(**values))

    def _kick_soon(self) -> None:
        """Wakes the loop (a slot is free): it looks for due deliveries at once."""
        if self._kick is not None:
            self._kick.set()

    # -- webhooks --------------------------------------------------------------------------------

    def body(self, row: Row) -> bytes:
        return json.dumps({"event": row.event, "deliveryId": row.id, **row.payload},
                          separators=(",", ":"), sort_keys=True).encode()

    async def _post(self, row: Row) -> None:
        parts = urllib.parse.urlsplit(row.target)
        host, https = parts.hostname, parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise _Failure(f"{host}: cannot be resolved ({error.strerror})") from None
        except UnicodeError:
            raise _Failure(f"{host}: not a valid host name", permanent=True) from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not self._config.allow_private:
            refused = [address for address in addresses if non_public(address)]
            if refused:
                raise _Failure(f"{host} is {refused[0]}, not a public address", permanent=True)
        # The vetted address is the one connected to (a second lookup could answer otherwise);
        # the URL's host name goes in the Host header and in TLS (SNI and certificate check).
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        url = urllib.parse.urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
        shown_host = f"[{host}]" if ":" in host else host
        body = self.body(row)
        headers = {"Host": shown_host if parts.port is None else f"{shown_host}:{parts.port}",
                   "Content-Type": "application/json", "User-Agent": "prominence-server notifications",
                   EVENT_HEADER: row.event, DELIVERY_HEADER: str(row.id),
                   SIGNATURE_HEADER: signature(self.webhook_secret(row.owner), body)}
        auth = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")) \
            if parts.username else None
        async with (httpx.AsyncClient(timeout=self._config.timeout, trust_env=False, follow_redirects=False,
                                      auth=auth) as client,
                    client.stream("POST", url, content=body, headers=headers,
                                  extensions={"sni_hostname": host} if https else {}) as response):
            if not 200 <= response.status_code < 300:  # redirects are not followed: a failure too
                raise _Failure(f"HTTP {response.status_code}")

    # -- e-mail ----------------------------------------------------------------------------------

    def message(self, row: Row) -> EmailMessage:
        payload = row.payload
        what = row.subject
        name = f" ({payload['name']})" if payload.get("name") else ""
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = row.target
        message["Subject"] = f"PROMINENCE {what} {payload['id']}{name} {payload['status']}"
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = f"<notification-{row.id}.{what}-{payload['id']}@{self._sender.rsplit('@', 1)[1]}>"
        message[DELIVERY_HEADER] = str(row.id)
        message[EVENT_HEADER] = row.event
        lines = [f"Your {what} {payload['id']}{name} has finished: {payload['status']}."]
        if payload.get("statusReason"):
            lines.append(f"Reason: {payload['statusReason']}")
        if (progress := payload.get("progress")) is not None:
            lines.append(f"Jobs: {progress['total']} in all, {progress['done']} completed successfully, "
                         f"{progress['failed']} failed, {progress['waiting'] + progress['queued']} not run or stopped")
        for key, label in (("createTime", "Created"), ("startTime", "Started"), ("endTime", "Ended")):
            if (value := payload.get("events", {}).get(key)) is not None:
                stamp = datetime.datetime.fromtimestamp(value, datetime.UTC)
                lines.append(f"{label}: {stamp:%Y-%m-%d %H:%M:%S} UTC")
        message.set_content("\n".join(lines) + "\n")
        return message

    def _mail(self, row: Row) -> None:
        try:
            message = self.message(row)
        except (ValueError, TypeError) as error:  # e.g. an address that cannot be a header
            raise _Failure(f"cannot write the message: {error}", permanent=True) from None
        parts = urllib.parse.urlsplit(self._config.smtp_url)
        implicit_tls = parts.scheme == "smtps"
        port = parts.port or (465 if implicit_tls else 587 if parts.scheme == "smtp+starttls" else 25)
        timeout = self._config.timeout
        smtp = (smtplib.SMTP_SSL(parts.hostname, port, timeout=timeout, context=ssl.create_default_context())
                if implicit_tls else smtplib.SMTP(parts.hostname, port, timeout=timeout))
        try:
            if parts.scheme == "smtp+starttls":
                smtp.starttls(context=ssl.create_default_context())
            if parts.username:
                smtp.login(urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
            smtp.send_message(message)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
            code = getattr(error, "smtp_code", None) or next(
                (answer[0] for answer in getattr(error, "recipients", {}).values()), 0)
            raise _Failure(f"the SMTP server refused the message: {error}"[:500], permanent=500 <= code < 600) from None
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()


def _host(row: Row) -> str:
    """What a delivery's concurrency is counted against: the webhook's host and port, or the SMTP server."""
    if row.kind == "webhook":
        parts = urllib.parse.urlsplit(row.target)
        return f"{(parts.hostname or '').lower()}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    return "smtp"
