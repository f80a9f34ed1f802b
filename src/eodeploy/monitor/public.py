"""What monitoring responses may show: every secret and server detail masked in one place.

Slack and Teams webhooks carry their secret in the URL, e-mail addresses are personal data, and
folders, output paths and reply bodies describe the server. Every ``/monitor`` response goes
through :func:`public` (the CLI, run by an operator on the host, shows them in full)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)]+")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
#: The folders of an absolute path ("/srv/data/x.tif" -> "…/x.tif"); not a URL's "//" or "/…".
_FOLDERS = re.compile(r"(?<![\w:/.…])/(?:[^/\s'\"]+/)+")
_URL_KEYS = {"webhook_url", "url"}


def mask_url(url: str) -> str:
    """``scheme://host[:port]/…``: where it goes, not the path or query that carry the secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "…"
    if not parts.scheme:
        return "…"
    return f"{parts.scheme}://{host}{port}/…" if host else f"{parts.scheme}:///…"  # sqlite:///…


def mask_email(address: str) -> str:
    local, at, domain = address.partition("@")
    return f"{local[:1]}***@{domain}" if at else "***"


def scrub(text: str) -> str:
    """Free text (errors, messages) with URLs, e-mail addresses and server folders masked."""
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    return _FOLDERS.sub("…/", text)


def public(value: Any, key: str | None = None) -> Any:
    """``value`` (JSON-like) as a response may show it."""
    if isinstance(value, dict):
        return {k: public(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if key == "emails":
            return [mask_email(v) if isinstance(v, str) else v for v in value]
        return [public(v, key) for v in value]
    if isinstance(value, str):
        if key in _URL_KEYS or (key == "target" and "://" in value):
            return mask_url(value)
        if key == "target":
            return mask_email(value)
        return scrub(value)
    return value
