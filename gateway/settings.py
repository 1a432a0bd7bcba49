"""Server settings: command-line flags first, then PROMINENCE_* environment variables, then defaults."""
import os
import re
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path


def _env_number(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.S)


class SettingsError(ValueError):
    """Settings that cannot work together (e.g. a TLS certificate without its key); one line."""


def _check_tls(cert: str | None, key: str | None, agent_ca: str | None) -> None:
    """Fails early and clearly, rather than with uvicorn's (or an agent's) traceback later."""
    if bool(cert) != bool(key):
        raise SettingsError("--tls-cert and --tls-key go together (PEM certificate chain and its private key)")
    if cert:
        for option, path in (("--tls-cert", cert), ("--tls-key", key)):
            if not os.access(path, os.R_OK) or not os.path.isfile(path):
                raise SettingsError(f"{option} {path}: not a readable file")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as error:
            raise SettingsError(f"--tls-cert {cert} with --tls-key {key}: not a PEM certificate and its "
                                f"private key ({error})") from None
    if agent_ca:
        try:
            ssl.create_default_context(cafile=agent_ca)
        except (ssl.SSLError, OSError) as error:
            raise SettingsError(f"--agent-ca {agent_ca}: not a readable PEM CA bundle ({error})") from None


_ORIGIN = re.compile(r"https?://[^/\s?#@]+")


def _check_origins(origins: list[str]) -> tuple[str, ...]:
    """CORS origins as browsers send them: scheme://host[:port], nothing after; or `*` for any."""
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise SettingsError(f"--cors-origin {origin}: not an origin (scheme://host[:port], e.g. "
                                "https://app.example.org, or *)")
    return tuple(origin.rstrip("/") for origin in origins)


_MAIL_ADDRESS = re.compile(r"[^@\s<>,;\x00-\x1f\x7f]{1,200}@[^@\s<>,;\x00-\x1f\x7f]{1,200}")


def _check_notifications(options: dict) -> None:
    """The SMTP URL, the sender address and the delivery limits, checked at start-up."""
    from urllib.parse import urlsplit

    if url := options.get("smtp_url"):
        try:
            parts = urlsplit(url)
            parts.port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("smtp", "smtp+starttls", "smtps") or not parts.hostname:
            # Not echoed: it may hold a password.
            raise SettingsError("--smtp-url: must be smtp://host[:port], "
                                "smtp+starttls://host[:port] or smtps://host[:port], with user:password@ "
                                "before the host if the server wants a login")
    if (sender := options.get("mail_from")) and not _MAIL_ADDRESS.fullmatch(sender):
        raise SettingsError(f"--mail-from {sender}: must be an e-mail address")
    for name, least in (("notify_timeout", 0.1), ("notify_backoff", 0.0), ("notify_attempts", 1)):
        value = options.get(name)
        if value is not None and not (least <= value <= 86400):
            raise SettingsError(f"--{name.replace('_', '-')} {value}: must be from {least} to 86400")


def _check_storage(options: dict) -> None:
    """The object store's URL and the upload limit, checked at start-up (never echoing a URL's userinfo)."""
    from urllib.parse import urlsplit

    if (url := options.get("storage_url")) and url != "local":
        parts = urlsplit(url)
        if parts.username or parts.password:
            raise SettingsError("--storage-url: must not hold keys (set them with `prominence-server storage "
                                "set-credentials`, which keeps them encrypted)")
        if parts.scheme not in ("s3", "s3+http", "s3+https"):
            raise SettingsError(f"--storage-url {url}: must be local, s3://BUCKET[?region=R] or "
                                "s3+http(s)://HOST[:PORT]/BUCKET[?region=R]")
    if (limit := options.get("max_upload_bytes")) is not None and not 1 <= limit <= 5 * 1024**4:
        raise SettingsError(f"--max-upload-bytes {limit}: must be from 1 to 5 TiB")


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    public_url: str  # how jobs, agents and download links reach this server, e.g. http://127.0.0.1:8080
    run_provisioner: bool = True  # False: `serve --no-provisioner`, another process provisions
    idle_timeout: float | None = None  # seconds a local node may be idle before it is deleted (None: the record's)
    heartbeat_timeout: float = 60.0  # seconds without a heartbeat before a node is lost
    local_cpus: int | None = None  # size of the `local` cloud (default: this machine)
    local_memory_mb: int | None = None
    agent_gateway_timeout: float = 900.0  # seconds an agent without the gateway keeps its jobs running
    reconcile_interval: float = 30.0  # seconds between comparisons of the clouds' instances with the database
    client_timeout: float = 20.0  # seconds a client has to send a request's headers, and its body (per MiB)
    tls_cert: str | None = None  # PEM certificate chain: with tls_key, the service serves HTTPS
    tls_key: str | None = None  # PEM private key of tls_cert
    agent_ca: str | None = None  # PEM CA bundle agents trust (default tls_cert when TLS is on; None: system CAs)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API, e.g. https://app.example.org
    # Notifications (gateway/services/notify.py, docs/api-decisions.md "Notifications")
    smtp_url: str | None = None  # smtp://[user:password@]host[:port], smtp+starttls://..., smtps://...; None: no e-mail
    mail_from: str | None = None  # the From address of notification e-mails (default prominence@<this host>)
    webhook_allow_private: bool = False  # webhooks may reach loopback, private and link-local addresses
    notify_timeout: float = 10.0  # seconds for one delivery attempt (webhook POST, SMTP conversation)
    notify_attempts: int = 8  # attempts of one delivery before it is given up
    notify_backoff: float = 30.0  # seconds before the first retry; doubled for each next one, at most an hour
    # Data (gateway/services/data.py, docs/api-decisions.md "Data")
    storage_url: str = "local"  # local (files in the data dir), s3://BUCKET[?region=R], s3+http(s)://HOST[:PORT]/BUCKET
    max_upload_bytes: int = 5 * 1024**3  # the largest uploaded object

    @classmethod
    def load(cls, data_dir: str | None = None, database_url: str | None = None, public_url: str | None = None,
             host: str = "127.0.0.1", port: int = 8080, **options) -> "Settings":
        path = Path(data_dir or os.environ.get("PROMINENCE_DATA_DIR") or "data").resolve()
        path.mkdir(parents=True, exist_ok=True)
        url = database_url or os.environ.get("PROMINENCE_DATABASE_URL") or f"sqlite:///{path / 'prominence.db'}"
        for name in ("tls_cert", "tls_key", "agent_ca"):
            options[name] = options.get(name) or os.environ.get(f"PROMINENCE_{name.upper()}") or None
        if options["tls_cert"] and options["tls_key"] and not options["agent_ca"]:
            options["agent_ca"] = options["tls_cert"]
        _check_tls(options["tls_cert"], options["tls_key"], options["agent_ca"])
        origins = options.get("cors_origins") or os.environ.get("PROMINENCE_CORS_ORIGINS", "").split(",")
        options["cors_origins"] = _check_origins([origin.strip() for origin in origins if origin.strip()])
        scheme = "https" if options["tls_cert"] else "http"
        public = public_url or os.environ.get("PROMINENCE_PUBLIC_URL") or f"{scheme}://{host}:{port}"
        for name in ("idle_timeout", "heartbeat_timeout", "local_cpus", "local_memory_mb", "agent_gateway_timeout",
                     "reconcile_interval", "client_timeout"):
            if options.get(name) is None and (value := _env_number(f"PROMINENCE_{name.upper()}")) is not None:
                options[name] = int(value) if name.startswith("local_") else value
        for name in ("smtp_url", "mail_from"):
            options[name] = options.get(name) or os.environ.get(f"PROMINENCE_{name.upper()}") or None
        for name in ("notify_timeout", "notify_attempts", "notify_backoff"):
            if options.get(name) is None and (value := _env_number(f"PROMINENCE_{name.upper()}")) is not None:
                options[name] = int(value) if name == "notify_attempts" else value
        _check_notifications(options)
        options["storage_url"] = options.get("storage_url") or os.environ.get("PROMINENCE_STORAGE_URL") or None
        if options.get("max_upload_bytes") is None and (value := _env_number("PROMINENCE_MAX_UPLOAD_BYTES")) is not None:
            options["max_upload_bytes"] = int(value)
        _check_storage(options)
        options = {k: v for k, v in options.items() if v is not None}
        return cls(data_dir=path, database_url=url, public_url=public.rstrip("/"), **options)

    @property
    def tls(self) -> bool:
        """True when this service serves HTTPS itself."""
        return bool(self.tls_cert and self.tls_key)

    @property
    def agent_ca_pem(self) -> str | None:
        """The CA bundle agents trust (the playbook writes it to the node), or None: the node's system CAs.
        Only the file's certificates: a --tls-cert file that also holds the private key (which
        --tls-key may name too) must not send that key to every node."""
        if not self.agent_ca:
            return None
        with open(self.agent_ca) as handle:
            certificates = _PEM_CERTIFICATE.findall(handle.read())
        return "".join(f"{certificate}\n" for certificate in certificates) or None

    @property
    def secret(self) -> bytes:
        """The token-signing secret: PROMINENCE_SECRET, else a random one kept in the data dir."""
        if env := os.environ.get("PROMINENCE_SECRET"):
            return env.encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return path.read_text().strip().encode()
