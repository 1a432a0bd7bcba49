"""`prominence-server`: run the service (or its provisioner apart) and issue tokens."""
import argparse
import os
import signal
import sys
import threading

from gateway.cloud_cli import add_commands as add_cloud_commands
from schema.errors import DomainError
from schema.identity import TokenAuthority, check_token_claims
from gateway.settings import Settings, SettingsError


def _settings(args: argparse.Namespace, **extra) -> Settings:
    return Settings.load(args.data_dir, args.database_url, args.public_url, args.host, args.port,
                         idle_timeout=args.idle_timeout, heartbeat_timeout=args.heartbeat_timeout,
                         local_cpus=args.local_cpus, local_memory_mb=args.local_memory_mb,
                         agent_gateway_timeout=args.agent_gateway_timeout,
                         reconcile_interval=args.reconcile_interval,
                         client_timeout=getattr(args, "client_timeout", None),
                         tls_cert=args.tls_cert, tls_key=args.tls_key, agent_ca=args.agent_ca,
                         cors_origins=getattr(args, "cors_origin", None),
                         storage_url=getattr(args, "storage_url", None),
                         max_upload_bytes=getattr(args, "max_upload_bytes", None),
                         **{name: getattr(args, name, None) for name in _NOTIFY_OPTIONS}, **extra)


# serve's notification options (gateway/services/notify.py), by their Settings names
_NOTIFY_OPTIONS = ("smtp_url", "mail_from", "webhook_allow_private", "notify_timeout", "notify_attempts",
                   "notify_backoff")


def _log_to_stderr() -> None:
    """The service's own log lines (the provisioner's "creating node", "configured"...): uvicorn
    configures only its own loggers."""
    import logging

    logging.basicConfig(level=os.environ.get("PROMINENCE_LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from gateway.app import create_app, http_protocol

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # Agents' claims long-poll for 20 s: they answer at once, so the graceful shutdown
            # does not wait for them (nor cancel them with a traceback in the log).
            if hasattr(app.state, "agent"):
                app.state.agent.stop_claims()
            super().handle_exit(sig, frame)

    _log_to_stderr()
    settings = _settings(args, run_provisioner=not args.no_provisioner)
    app = create_app(settings)
    # A bounded graceful shutdown all the same: a second Ctrl-C while uvicorn waits for slow
    # requests would skip the shutdown that stops the local nodes.
    server = Server(uvicorn.Config(app, host=args.host, port=args.port, access_log=args.access_log,
                                   log_level=os.environ.get("PROMINENCE_LOG_LEVEL", "info"),
                                   timeout_graceful_shutdown=3, http=http_protocol(settings.client_timeout),
                                   ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises Ctrl-C again once it has shut down (as uvicorn.run ignores it)
        pass


def _provisioner(args: argparse.Namespace) -> None:
    """The provisioner alone, against the gateway's database (`serve --no-provisioner` elsewhere).
    Without the gateway's in-process signals it looks at the database every second."""
    from gateway.app import build_provisioner
    from schema.db import make_engine, upgrade
    from schema.credentials import CredentialBox
    from schema.signals import Signal

    _log_to_stderr()
    settings = _settings(args)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    provisioner = build_provisioner(settings, engine, TokenAuthority(settings.secret),
                                    CredentialBox.for_data_dir(settings.data_dir), Signal(), Signal())
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    provisioner.start()
    stopping.wait()
    provisioner.stop()
    engine.dispose()


def _token_create(args: argparse.Namespace) -> None:
    check_token_claims(args.user, args.group, args.email, args.days)
    settings = Settings.load(args.data_dir)
    token = TokenAuthority(settings.secret).issue(
        args.user, groups=tuple(args.group), email=args.email, admin=args.admin, days=args.days)
    print(token)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="prominence-server", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    provisioner = commands.add_parser("provisioner", help="run only the provisioner (with `serve --no-provisioner`)")
    for command in (serve, provisioner):
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=8080)
        command.add_argument("--data-dir", help="state and storage (default ./data, or PROMINENCE_DATA_DIR)")
        command.add_argument("--database-url", help="SQLAlchemy URL (default SQLite in the data dir, or "
                                                    "PROMINENCE_DATABASE_URL); postgresql+psycopg://... works too")
        command.add_argument("--public-url", help="the URL jobs, agents and download links use, e.g. a "
                                                  "TLS-terminating proxy's (default http(s)://HOST:PORT)")
        command.add_argument("--idle-timeout", type=float,
                             help="seconds before an idle node of the local cloud is deleted (sets the local "
                                  "cloud's idle_timeout; default 600)")
        command.add_argument("--heartbeat-timeout", type=float,
                             help="seconds without a heartbeat before a node is lost (default 60)")
        command.add_argument("--local-cpus", type=int, help="cpus of the local cloud (default: this machine's)")
        command.add_argument("--local-memory-mb", type=int,
                             help="memory of the local cloud (default: this machine's)")
        command.add_argument("--agent-gateway-timeout", type=float,
                             help="seconds a node's agent goes on without reaching the gateway before it "
                                  "stops its jobs and exits (default 900)")
        command.add_argument("--reconcile-interval", type=float,
                             help="seconds between comparisons of every cloud's instances with the database "
                                  "(default 30)")
        command.add_argument("--tls-cert", help="PEM certificate (chain) to serve HTTPS with, together with "
                                                "--tls-key (or PROMINENCE_TLS_CERT); the default public URL "
                                                "becomes https://HOST:PORT")
        command.add_argument("--tls-key", help="PEM private key of --tls-cert (or PROMINENCE_TLS_KEY)")
        command.add_argument("--agent-ca", help="PEM CA bundle nodes' agents trust for the gateway's certificate "
                                                "(or PROMINENCE_AGENT_CA; default: --tls-cert when serving HTTPS, "
                                                "else the nodes' system CAs)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--client-timeout", type=float,
                       help="seconds a client has to send a request's headers, and its body (per MiB); "
                            "slower clients are cut off (default 20)")
    serve.add_argument("--cors-origin", action="append",
                       help="a browser origin allowed to call the API and GraphQL (scheme://host[:port], or * "
                            "for any); repeat it for several (or PROMINENCE_CORS_ORIGINS, comma-separated)")
    serve.add_argument("--smtp-url", help="SMTP server for e-mail notifications: smtp://[user:password@]host[:port] "
                                          "(plain), smtp+starttls://... or smtps://... (or PROMINENCE_SMTP_URL); "
                                          "without it no e-mail is sent")
    serve.add_argument("--mail-from", help="From address of notification e-mails (or PROMINENCE_MAIL_FROM; "
                                           "default prominence@<this host>)")
    serve.add_argument("--webhook-allow-private", action="store_true", default=None,
                       help="let webhook notifications reach loopback, private, link-local and other non-public "
                            "addresses (refused by default: users choose the URLs)")
    serve.add_argument("--notify-timeout", type=float,
                       help="seconds for one attempt to send a notification (default 10)")
    serve.add_argument("--notify-attempts", type=int,
                       help="attempts to send a notification before it is given up (default 8)")
    serve.add_argument("--notify-backoff", type=float,
                       help="seconds before a failed notification is tried again, doubled after each "
                            "failure, at most an hour (default 30)")
    serve.add_argument("--storage-url", help="object store of uploads and outputs: local (files in the data dir, "
                                             "the default), s3://BUCKET[?region=R] or "
                                             "s3+http(s)://HOST[:PORT]/BUCKET[?region=R] (or PROMINENCE_STORAGE_URL); "
                                             "its keys: `storage set-credentials`")
    serve.add_argument("--max-upload-bytes", type=int,
                       help="the largest object users may upload (default 5 GiB; or PROMINENCE_MAX_UPLOAD_BYTES)")
    serve.add_argument("--no-provisioner", action="store_true",
                       help="do not create nodes or schedule jobs here (run `provisioner` apart)")
    serve.set_defaults(run=_serve)
    provisioner.set_defaults(run=_provisioner)

    token = commands.add_parser("token", help="tokens").add_subparsers(dest="token_command", required=True)
    create = token.add_parser("create", help="print a JWT signed with the server's secret")
    create.add_argument("--user", required=True)
    create.add_argument("--group", action="append", default=[], help="repeatable")
    create.add_argument("--email")
    create.add_argument("--admin", action="store_true")
    create.add_argument("--days", type=float, default=30, help="validity (default 30)")
    create.add_argument("--data-dir", help="the server's data dir, which holds its secret (default ./data)")
    create.set_defaults(run=_token_create)
    add_cloud_commands(commands)
    _add_storage_commands(commands)
    return top


def _storage_credentials(args: argparse.Namespace) -> None:
    """The object store's keys, from a YAML/JSON mapping (`key`, `secret`) in a file or stdin, never
    argv; kept encrypted (schema/credentials.py), never shown."""
    import yaml

    from gateway.services.data import set_storage_credentials
    from schema.credentials import CredentialBox
    from schema.db import make_engine, upgrade

    text = sys.stdin.read() if args.file in (None, "-") else open(args.file, encoding="utf-8").read()
    try:
        credentials = yaml.safe_load(text)
    except yaml.YAMLError:
        sys.exit("prominence-server: the storage credentials are not YAML (a mapping with key and secret)")
    settings = Settings.load(args.data_dir, args.database_url)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    set_storage_credentials(engine, CredentialBox.for_data_dir(settings.data_dir), credentials)
    engine.dispose()
    print("storage credentials set (they take effect when the server starts)")


def _storage_show(args: argparse.Namespace) -> None:
    from gateway.services.data import storage_credentials_updated
    from schema.db import make_engine, upgrade

    settings = Settings.load(args.data_dir, args.database_url)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    updated = storage_credentials_updated(engine)
    engine.dispose()
    print(f"credentials: {'set' if updated else 'not set'}")


def _add_storage_commands(commands) -> None:
    storage = commands.add_parser("storage", help="the object store's credentials").add_subparsers(
        dest="storage_command", required=True)
    credentials = storage.add_parser("set-credentials", help="set or rotate the S3 store's keys (a YAML mapping "
                                                             "with key and secret, from --file or stdin)")
    credentials.add_argument("--file", help="default: stdin")
    credentials.set_defaults(run=_storage_credentials)
    show = storage.add_parser("show", help="whether the store's keys are set (never the keys)")
    show.set_defaults(run=_storage_show)
    for command in (credentials, show):
        command.add_argument("--data-dir", help="the server's data dir (default ./data, or PROMINENCE_DATA_DIR)")
        command.add_argument("--database-url", help="the server's database (default SQLite in the data dir)")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except DomainError as error:
        sys.exit(f"prominence-server: {error.message}")
    except SettingsError as error:
        sys.exit(f"prominence-server: {error}")


if __name__ == "__main__":
    main()
