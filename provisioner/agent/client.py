"""The agent's side of /agent/v1: small JSON and byte requests with the node token (stdlib only)."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class GatewayError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


class Gateway:
    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/") + "/agent/v1"
        self._headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
             timeout: float = 60.0, retries: int = 5) -> dict[str, Any]:
        """One request; connection failures are retried with backoff (the gateway may be restarting),
        HTTP errors are raised as GatewayError."""
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
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as error:
                try:
                    message = json.loads(error.read()).get("error", "")
                except ValueError:
                    message = error.reason
                raise GatewayError(error.code, message) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if attempt == retries:
                    raise
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
        raise AssertionError("unreachable")
