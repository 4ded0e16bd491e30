"""Serving ``/metrics``: an explicit bind address and optional scrape authentication.

prometheus_client's own ``start_http_server`` has no authentication, so the exporter and
the workers serve its WSGI app through :func:`serve` instead, behind :func:`guarded`.
Prometheus can present either credential that :class:`ScrapeAuth` accepts: ``basic_auth``
or ``authorization`` (a bearer token) in a scrape config.

The credentials are compared in constant time (``hmac.compare_digest``) so that response
times do not tell how much of a guess was right. Without TLS they cross the network in
clear text: inside the compose network, or behind a TLS-terminating proxy, that is the
deployment's choice.

A client gets little from the server without a credential: the request line and headers
must arrive within :data:`TIMEOUT_SECONDS` in all (a byte at a time does not stretch it),
the credential is checked as soon as they have, before any body is read, and at most
:data:`MAX_CONNECTIONS` connections are served at once; one more waits up to
:data:`QUEUE_WAIT_SECONDS` for a free slot and then gets a 503.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

from pydantic import SecretStr

from retention.config import Settings

logger = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
REALM = "retention"
#: How long a request's line and headers may take in all; then how long each later read
#: or write of it may wait
TIMEOUT_SECONDS = 10.0
#: Connections served at once (a scrape is one; Prometheus makes one per interval)
MAX_CONNECTIONS = 16
#: How long a connection past the cap waits for a slot before its 503
QUEUE_WAIT_SECONDS = 2.0


class AuthConfigError(ValueError):
    """A credential setting that cannot be used (empty, or basic auth without a colon)."""


def _secret(value: SecretStr | None, path: Path | None, name: str) -> str | None:
    if value is not None and path is not None:
        raise AuthConfigError(f"set {name} or {name}_FILE, not both")
    if path is not None:
        try:
            # a trailing newline is what editors and `echo` leave, never part of the secret
            text = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise AuthConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc
    elif value is not None:
        text = value.get_secret_value()
    else:
        return None
    if not text:
        raise AuthConfigError(f"{name} is empty")
    return text


@dataclass(frozen=True, slots=True)
class ScrapeAuth:
    """Who may scrape: holders of the bearer token, of the basic-auth pair, or of either."""

    bearer_token: bytes | None = None
    basic_user: bytes | None = None
    basic_password: bytes | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ScrapeAuth | None:
        """The configured credentials, None when none are set (no auth)."""
        token = _secret(
            settings.metrics_bearer_token,
            settings.metrics_bearer_token_file,
            "RETENTION_METRICS_BEARER_TOKEN",
        )
        basic = _secret(
            settings.metrics_basic_auth,
            settings.metrics_basic_auth_file,
            "RETENTION_METRICS_BASIC_AUTH",
        )
        if token is None and basic is None:
            return None
        user = password = None
        if basic is not None:
            name, sep, secret = basic.partition(":")
            if not sep or not name or not secret:
                raise AuthConfigError('RETENTION_METRICS_BASIC_AUTH must be "user:password"')
            user, password = name.encode(), secret.encode()
        return cls(None if token is None else token.encode(), user, password)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries a configured credential."""
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and self.bearer_token is not None:
            return hmac.compare_digest(credentials.encode(), self.bearer_token)
        if scheme.lower() == "basic" and self.basic_user is not None:
            return self._basic(credentials)
        return False

    def _basic(self, credentials: str) -> bool:
        assert self.basic_user is not None and self.basic_password is not None
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        # both compared, whatever the first gives: no timing difference between them
        user_ok = hmac.compare_digest(user, self.basic_user)
        password_ok = hmac.compare_digest(password, self.basic_password)
        return bool(sep) and user_ok and password_ok

    def challenges(self) -> list[str]:
        """``WWW-Authenticate`` values: one per accepted scheme."""
        out = []
        if self.bearer_token is not None:
            out.append(f'Bearer realm="{REALM}"')
        if self.basic_user is not None:
            out.append(f'Basic realm="{REALM}", charset="UTF-8"')
        return out


UNAUTHORIZED_BODY = b"authentication required\n"


class Guarded:
    """A WSGI app behind a :class:`ScrapeAuth`: a request without a valid credential gets a
    401. :func:`serve` sees the auth and checks it on the headers alone; the app checks it
    again, so that it is safe under any other WSGI server too."""

    def __init__(self, app: WsgiApp, auth: ScrapeAuth) -> None:
        self.app, self.auth = app, auth

    def refusal(self) -> list[tuple[str, str]]:
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        return headers + [("WWW-Authenticate", value) for value in self.auth.challenges()]

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if self.auth.allows(environ.get("HTTP_AUTHORIZATION")):
            return self.app(environ, start_response)
        start_response("401 Unauthorized", self.refusal())
        return [UNAUTHORIZED_BODY]


def guarded(app: WsgiApp, auth: ScrapeAuth | None) -> WsgiApp:
    """``app`` behind ``auth``: any request without a valid credential gets a 401."""
    return app if auth is None else Guarded(app, auth)


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes, each read waiting only for what is left until ``deadline``, so a
    client cannot stretch a request by sending it a byte at a time. Writes, which share the
    socket's timeout, get ``write_timeout`` back after each read."""

    def __init__(self, sock: socket.socket, deadline: float, write_timeout: float) -> None:
        self.sock, self.deadline, self.write_timeout = sock, deadline, write_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long to arrive")
        self.sock.settimeout(left)
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.write_timeout)


class _Handler(WSGIRequestHandler):
    """One request per connection, read within the server's timeout, its credential checked
    before the app or anything of a body sees it. Requests are not logged: a scrape every
    few seconds would flood the log."""

    server: _Server

    def setup(self) -> None:
        super().setup()
        timeout = self.server.timeout_seconds
        self._raw = _DeadlineReader(self.connection, time.monotonic() + timeout, timeout)
        self.rfile = io.BufferedReader(self._raw)

    def handle(self) -> None:
        try:
            self._handle()
        except (TimeoutError, ConnectionError) as exc:
            logger.debug("metrics request dropped", extra={"error": repr(exc)})
            self.close_connection = True

    def _handle(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():  # the error is sent
            return
        # the head is in: the body and the answer get a timeout of their own
        self._raw.deadline = time.monotonic() + self.server.timeout_seconds
        app = self.server.get_app()
        assert app is not None
        if isinstance(app, Guarded) and not app.auth.allows(self.headers.get("Authorization")):
            self._refuse(app)
            return
        handler = ServerHandler(
            self.rfile,
            cast(IO[bytes], self.wfile),
            self.get_stderr(),
            self.get_environ(),
            multithread=True,
        )
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(app)

    def _refuse(self, app: Guarded) -> None:
        self.send_response(401)
        for name, value in app.refusal():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(UNAUTHORIZED_BODY)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(UNAUTHORIZED_BODY)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: 5\r\n\r\nbusy\n"
)


class _Server(WSGIServer):
    """A thread per connection, at most ``max_connections`` at once (see the module)."""

    timeout_seconds = TIMEOUT_SECONDS
    queue_wait_seconds = QUEUE_WAIT_SECONDS
    _slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def limit(self, timeout: float, max_connections: int, queue_wait: float) -> None:
        """Set the limits; before serving."""
        self.timeout_seconds, self.queue_wait_seconds = timeout, queue_wait
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=self.queue_wait_seconds):
            self._busy(request)
            return
        thread = threading.Thread(
            target=self._serve, args=(request, client_address), name="metrics-request"
        )
        thread.daemon = True
        thread.start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def _busy(self, request: socket.socket) -> None:
        try:
            request.settimeout(1.0)
            request.sendall(BUSY)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.warning("metrics request failed", exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(
    app: WsgiApp,
    host: str,
    port: int,
    *,
    timeout: float = TIMEOUT_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
    queue_wait: float = QUEUE_WAIT_SECONDS,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``app`` on ``host:port`` from a daemon thread; port 0 picks a free one.

    ``timeout``, ``max_connections`` and ``queue_wait`` bound what clients hold (see the
    module); the defaults suit a scrape endpoint.
    """
    if timeout <= 0 or max_connections < 1 or queue_wait < 0 or math.isnan(timeout):
        raise ValueError("serve: timeout and queue_wait must be positive, max_connections >= 1")
    server_class = _Server6 if ":" in host else _Server
    server = make_server(host, port, app, server_class, handler_class=_Handler)
    server.limit(timeout, max_connections, queue_wait)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
