"""The console's settings, checked at start-up: a console that cannot sign anyone in
safely does not start."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from authz.admin.server import is_loopback_host
from authz.approvals.webhook import require_http_url
from authz.console.roles import RoleMap
from authz.observe.audit import ArgumentPath

TRACE_ID_FIELD: Final = "{trace_id}"
# Shorter secrets could be guessed, and with them every session cookie forged.
MIN_SECRET_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class Oidc:
    issuer: str
    client_id: str
    client_secret: str = ""  # empty: a public client, PKCE alone

    @property
    def metadata_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    listen: str
    # Where people reach the console (behind any proxy): cookies are Secure when it is
    # https, OIDC redirects come back to it, and the webhook links to it.
    public_url: str
    roles: RoleMap
    session_secret: bytes
    oidc: Oidc | None = None
    # The header an authenticating proxy in front of the console sets to the person.
    trusted_header: str | None = None
    trace_url: str | None = None
    # Argument paths never shown, even to approvers (PATH or TOOL:PATH, as --audit-args).
    redact: tuple[ArgumentPath, ...] = ()

    @property
    def secure_cookies(self) -> bool:
        return urlsplit(self.public_url).scheme == "https"

    def trace_link(self, trace_id: str | None) -> str | None:
        if not self.trace_url or not trace_id:
            return None
        return self.trace_url.replace(TRACE_ID_FIELD, trace_id)


def build_console(
    listen: str,
    *,
    public_url: str | None,
    roles_file: Path | None,
    oidc_issuer: str | None = None,
    oidc_client_id: str | None = None,
    oidc_client_secret_file: Path | None = None,
    trusted_header: str | None = None,
    trace_url: str | None = None,
    session_secret_file: Path | None = None,
    redact: Sequence[str] = (),
) -> ConsoleConfig:
    """Raises ValueError naming the flag and the fix for anything unsafe or missing."""
    if roles_file is None:
        raise ValueError(
            f"--console-listen {listen} needs --console-roles-file: it says who may view, "
            "approve and reset (see docs/console.md)"
        )
    if (oidc_issuer is None) == (trusted_header is None):
        raise ValueError(
            "the console needs one way to sign people in: --console-oidc-issuer (with "
            "--console-oidc-client-id) or --console-trusted-header (behind an auth proxy)"
        )
    url = public_url or f"http://{listen}"
    require_http_url("--console-public-url", url)
    if trace_url is not None:
        require_http_url("--console-trace-url", trace_url)
        if TRACE_ID_FIELD not in trace_url:
            raise ValueError(f"--console-trace-url {trace_url} has no {TRACE_ID_FIELD} in it")
    return ConsoleConfig(
        listen,
        url,
        RoleMap.load(roles_file),
        _session_secret(session_secret_file),
        oidc=_oidc(oidc_issuer, oidc_client_id, oidc_client_secret_file),
        trusted_header=trusted_header.lower() if trusted_header else None,
        trace_url=trace_url,
        redact=tuple(ArgumentPath.parse(spec) for spec in redact),
    )


def _oidc(issuer: str | None, client_id: str | None, secret_file: Path | None) -> Oidc | None:
    if issuer is None:
        return None
    require_http_url("--console-oidc-issuer", issuer)
    if urlsplit(issuer).scheme != "https" and not is_loopback_host(urlsplit(issuer).hostname or ""):
        raise ValueError(
            f"--console-oidc-issuer {issuer} must be https (plain http only on loopback)"
        )
    if not client_id:
        raise ValueError("--console-oidc-issuer needs --console-oidc-client-id")
    return Oidc(issuer, client_id, _read_line(secret_file) if secret_file else "")


def _session_secret(path: Path | None) -> bytes:
    """The key signing session cookies; without a file one per process (sign-ins then end
    at a restart and are not shared by replicas)."""
    if path is None:
        return secrets.token_bytes(MIN_SECRET_BYTES)
    secret = _read_line(path).encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the console session secret in {path} is shorter than {MIN_SECRET_BYTES} bytes "
            "(make one with: openssl rand -hex 32)"
        )
    return secret


def _read_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if not text or "\n" in text:
        raise ValueError(f"{path} must hold one line")
    return text
