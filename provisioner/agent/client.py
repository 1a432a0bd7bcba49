"""The agent's side of /agent/v1: small JSON and byte requests with the node token (stdlib only)."""
from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class GatewayError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


# OpenSSL's X509_V_FLAG_PARTIAL_CHAIN (ssl.VERIFY_X509_PARTIAL_CHAIN from Python 3.10 on).
_PARTIAL_CHAIN = getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0x80000)


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verifies the gateway's certificate and its name against `ca_file` (a PEM bundle), or against
    the system's CAs when there is none; never unverified. Any certificate of the bundle is a trust
    anchor, also one that is not self-signed (as Python >= 3.13 does by default): the gateway's own
    certificate or an intermediate CA can be trusted alone, on every Python. OSError (ssl.SSLError
    included) when the bundle cannot be read or holds no certificate."""
    context = ssl.create_default_context(cafile=ca_file)
    if ca_file:
        context.verify_flags |= _PARTIAL_CHAIN
    return context


def certificate_error(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind `error` (as urllib wraps it), if it is one."""
    reason = getattr(error, "reason", error)
    return reason if isinstance(reason, ssl.SSLCertVerificationError) else None


class Gateway:
    def __init__(self, url: str, token: str, ca_file: str | None = None):
        """`url` http(s)://host[:port]; for https, the gateway's certificate must verify against
        `ca_file` (or the system's CAs), and its name must match the URL's host."""
        self.url = url.rstrip("/") + "/agent/v1"
        self._headers = {"Authorization": f"Bearer {token}"}
        self.ca_file = ca_file
        self._context = None
        if urllib.parse.urlsplit(self.url).scheme == "https":
            try:
                self._context = tls_context(ca_file)
            except OSError as error:
                raise OSError(f"cannot use {ca_file} as the gateway's CA bundle: {error}") from None

    def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
             timeout: float = 60.0, retries: int = 5) -> dict[str, Any]:
        """One request; connection failures are retried with backoff (the gateway may be restarting),
        HTTP errors are raised as GatewayError. A gateway certificate that does not verify is no
        connection failure: ssl.SSLCertVerificationError (an OSError) is raised at once."""
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        headers = dict(self._headers)
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
            headers["Content-Type"] = "application/octet-stream"
        elif hasattr(body, "read"):  # a file, streamed from its start on every attempt
            data = body
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(os.fstat(body.fileno()).st_size)
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        else:
            data = None
        for attempt in range(retries + 1):
            if hasattr(data, "seek"):
                data.seek(0)
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=self._context) as response:
                    return json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as error:
                try:
                    message = json.loads(error.read()).get("error", "")
                except ValueError:
                    message = error.reason
                raise GatewayError(error.code, message) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                if (failure := certificate_error(error)) is not None:
                    raise failure from None
                if attempt == retries:
                    raise
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
        raise AssertionError("unreachable")
