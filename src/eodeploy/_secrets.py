"""Masking secrets before they are shown: database/Redis URLs carry passwords, webhook URLs tokens."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (``postgresql+psycopg://user:***@host/db``).

    A URL without a password is returned unchanged; so is a string that is not a URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # unparseable: show nothing rather than risk a secret
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostinfo}"))


def mask_settings(values: dict[str, Any]) -> dict[str, Any]:
    """A settings dump fit to print: URL passwords masked (SecretStr values already print as ``**``)."""
    return {k: mask_url(v) if isinstance(v, str) and "://" in v else v for k, v in values.items()}
