"""Serving ``/metrics``: an explicit bind address and optional scrape authentication.

prometheus_client's own ``start_http_server`` has no authentication, so the exporter and
the workers serve its WSGI app through :func:`serve` instead, behind :func:`guarded`.
Prometheus can present either credential that :class:`ScrapeAuth` accepts: ``basic_auth``
or ``authorization`` (a bearer token) in a scrape config.

The credentials are compared in constant time (``hmac.compare_digest``) so that response
times do not tell how much of a guess was right. Without TLS they cross the network in
clear text: inside the compose network, or behind a TLS-terminating proxy, that is the
deployment's choice.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pydantic import SecretStr

from retention.config import Settings

logger = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
REALM = "retention"


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


def guarded(app: WsgiApp, auth: ScrapeAuth | None) -> WsgiApp:
    """``app`` behind ``auth``: any request without a valid credential gets a 401."""
    if auth is None:
        return app

    def check(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if auth.allows(environ.get("HTTP_AUTHORIZATION")):
            return app(environ, start_response)
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        headers += [("WWW-Authenticate", value) for value in auth.challenges()]
        start_response("401 Unauthorized", headers)
        return [b"authentication required\n"]

    return check


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request, so that a slow scrape does not hold up the next one."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: a scrape every few seconds would flood the log."""


def serve(app: WsgiApp, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``app`` on ``host:port`` from a daemon thread; port 0 picks a free one."""
    server_class = _Server6 if ":" in host else _Server
    server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
