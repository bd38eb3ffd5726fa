"""Checks of everything outside the config that a run needs, done before it takes anything.

An unreachable Ray address or tracking server is reported in one line with exit code 2
before Ray starts or an MLflow run is created, instead of after minutes of retries.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from metaorch.orchestrator.errors import UserError
from metaorch.orchestrator.tracking_off import tracking_off

TIMEOUT_S = 3.0
_DB_SCHEMES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
# scheme://user:PASSWORD@host: a URL-encoded password holds no '/', '@' or whitespace.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it replaced by ``***``.

    Tracking URIs end up in MLflow params, ``config.yaml``, checkpoints, error and log lines;
    a database URI's password must reach none of them.
    """
    return _URL_PASSWORD.sub(r"\1:***@", text)


def _tcp_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            return True
    except OSError:
        return False


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, absolute; None for other URIs and in-memory stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    if path in ("", ":memory:"):
        return None
    return Path(path).expanduser().absolute()


def resolve_tracking_uri(uri: str) -> str:
    """Anchor a relative sqlite path to the current directory now.

    MLflow caches one store per URI string for the life of the process, so a relative
    ``sqlite:///mlflow.db`` would otherwise keep pointing into whatever directory was
    current when it was first opened.
    """
    path = sqlite_path(uri)
    return f"sqlite:///{path}" if path is not None else uri


def tracking_uri_for(given: str | None, configured: str) -> str:
    """The store a run logs to: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the config's."""
    return resolve_tracking_uri(given or os.environ.get("MLFLOW_TRACKING_URI") or configured)


def check_tracking_uri(uri: str) -> None:
    if tracking_off(uri):
        return
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None and not path.parent.is_dir():
            raise UserError(f"tracking URI {uri}: directory {path.parent} does not exist")
        return
    if scheme in ("", "file"):
        root = Path(parsed.path if scheme == "file" else uri).expanduser().absolute()
        if not root.parent.is_dir():
            raise UserError(f"tracking URI {uri}: directory {root.parent} does not exist")
        return
    if scheme in ("http", "https"):
        if not parsed.hostname:
            raise UserError(f"tracking URI {uri}: no host")
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_S) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            raise UserError(f"tracking URI {uri}: server answered HTTP {exc.code} on /health") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"tracking URI {uri} is unreachable: {reason}") from None
        raise UserError(f"tracking URI {uri}: /health did not answer 200")
    if scheme in _DB_SCHEMES:
        host, port = parsed.hostname or "localhost", parsed.port or _DB_SCHEMES[scheme]
        if not _tcp_reachable(host, port):
            raise UserError(f"tracking URI {uri}: database {host}:{port} is unreachable")
        return
    raise UserError(f"tracking URI {uri}: unsupported scheme {parsed.scheme!r} (use sqlite:///, file:, http(s):// or a database URI)")


def check_ray_address(address: str | None) -> None:
    """``None``/"local" start a local instance; "auto" is resolved by Ray; host:port is probed."""
    if address in (None, "", "local", "auto"):
        return
    if address.startswith(("http://", "https://")):
        raise UserError(
            f"Ray address {address}: that is a dashboard/job-API URL; use the GCS address (HOST:6379) "
            "or ray://HOST:10001 here"
        )
    target = address.removeprefix("ray://")
    host, sep, port_s = target.rpartition(":")
    if not sep or not port_s.isdigit() or not host:
        raise UserError(f"Ray address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    if not _tcp_reachable(host, int(port_s)):
        raise UserError(f"Ray address {address} is unreachable (no answer on {host}:{port_s} within {TIMEOUT_S:.0f}s)")
