"""One guard for every URL eodeploy fetches on someone else's say-so (webhooks, STAC APIs, STAC
Item and asset hrefs): http(s) only, no loopback, link-local (cloud metadata at 169.254.169.254),
private or unspecified addresses unless allowed, no redirects, bounded response sizes.

The policy comes from the settings at the edge (``URLPolicy.from_settings``) and is handed down
either as an argument or, for code deep in scene reading, as the current policy of this context
(``using(policy)``). With none set, the strict default applies.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from eodeploy.errors import EodeployError, PayloadTooLargeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedURLError(EodeployError, ValueError):
    """A URL the guard refuses: a scheme other than http(s), or a host on a blocked network."""


@dataclass(frozen=True)
class URLPolicy:
    #: Let private, loopback and link-local addresses through (a closed network, tests).
    allow_private: bool = False
    #: Host names or IP networks (CIDR) let through even when private, e.g. "127.0.0.1" in tests.
    allowed_hosts: tuple[str, ...] = ()
    #: Largest response body read, in bytes.
    max_bytes: int = 16 * 2**20

    @classmethod
    def from_settings(cls, settings: Any) -> URLPolicy:
        return cls(
            allow_private=settings.allow_private_urls,
            allowed_hosts=tuple(settings.allowed_url_hosts),
            max_bytes=int(settings.max_fetch_mib * 2**20),
        )

    def _host_allowed(self, host: str, addr: IPAddress | None = None) -> bool:
        for entry in self.allowed_hosts:
            if host.lower() == entry.lower():
                return True
            if addr is not None:
                try:
                    if addr in ipaddress.ip_network(entry, strict=False):
                        return True
                except ValueError:  # a host name, not a network
                    continue
        return False


_current: ContextVar[URLPolicy] = ContextVar("eodeploy_url_policy", default=URLPolicy())  # noqa: B039


def current_policy() -> URLPolicy:
    return _current.get()


@contextmanager
def using(policy: URLPolicy) -> Iterator[URLPolicy]:
    """Make ``policy`` the current one for the code run inside (this thread/context only)."""
    token = _current.set(policy)
    try:
        yield policy
    finally:
        _current.reset(token)


def _blocked_kind(addr: IPAddress) -> str | None:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for kind, hit in (
        ("unspecified", addr.is_unspecified),
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("private", addr.is_private),
        ("multicast", addr.is_multicast),
        ("reserved", addr.is_reserved),
    ):
        if hit:
            return kind
    return None


def check_url(url: str, policy: URLPolicy | None = None) -> str:
    """``url`` when the policy lets it through; else ``BlockedURLError`` saying why and how to
    allow it. Every address the host resolves to must pass (one private address is enough to
    refuse it)."""
    policy = policy or current_policy()
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise BlockedURLError(f"{url!r} is not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise BlockedURLError(
            f"only http(s) URLs are fetched; {parts.scheme or 'a scheme-less'}: URLs (file:, ftp:, ...) "
            "are refused. Give an http:// or https:// URL"
        )
    host = parts.hostname
    if not host:
        raise BlockedURLError(f"{url!r} names no host")
    if policy.allow_private or policy._host_allowed(host):
        return url
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BlockedURLError(f"the host {host!r} of {url!r} does not resolve ({exc})") from exc
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        kind = _blocked_kind(addr)
        if kind and not policy._host_allowed(host, addr):
            raise BlockedURLError(
                f"{parts.scheme}://{host}/… resolves to {addr}, a {kind} address; such addresses are "
                "refused (server-side request forgery). To allow it, add the host or its network to "
                "EODEPLOY_ALLOWED_URL_HOSTS (or set EODEPLOY_ALLOW_PRIVATE_URLS=true on a closed network)"
            )
    return url


def mask(url: str) -> str:
    """``scheme://host/…`` for messages: the path and query may carry a secret (Slack hooks)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…" if parts.netloc else "…"
    except ValueError:
        return "…"


def guarded_session(policy: URLPolicy | None = None) -> Any:
    """A ``requests.Session`` whose every request (pagination links included) passes the guard,
    that follows no redirects and reads at most ``policy.max_bytes`` of each response."""
    import requests
    from requests.adapters import HTTPAdapter

    pol = policy or current_policy()

    class _Guarded(HTTPAdapter):
        def send(self, request: Any, **kw: Any) -> Any:  # type: ignore[override]
            check_url(request.url, pol)
            kw["stream"] = True
            resp = super().send(request, **kw)
            if resp.is_redirect:
                resp.close()
                raise BlockedURLError(
                    f"{mask(request.url)} answered HTTP {resp.status_code}, a redirect to "
                    f"{mask(resp.headers.get('Location', ''))}; redirects are not followed: give the final URL"
                )
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > pol.max_bytes:
                resp.close()
                raise PayloadTooLargeError(
                    f"{mask(request.url)}: the response is {int(length)} bytes, over the limit of "
                    f"{pol.max_bytes} (EODEPLOY_MAX_FETCH_MIB)"
                )
            body = bytearray()
            for chunk in resp.raw.stream(65536, decode_content=True):
                body += chunk
                if len(body) > pol.max_bytes:
                    resp.close()
                    raise PayloadTooLargeError(
                        f"{mask(request.url)}: the response is over the limit of {pol.max_bytes} bytes "
                        "(EODEPLOY_MAX_FETCH_MIB)"
                    )
            resp._content = bytes(body)
            resp._content_consumed = True
            return resp

    session = requests.Session()  # a redirect raises in the adapter: it could lead anywhere
    adapter = _Guarded(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def fetch_bytes(url: str, policy: URLPolicy | None = None, timeout: float = 60.0) -> bytes:
    """GET ``url`` through the guard: no redirects, bounded; an HTTP error status raises."""
    import requests

    with guarded_session(policy) as s:
        r = s.get(url, timeout=timeout, allow_redirects=False)
        if r.is_redirect:
            raise BlockedURLError(
                f"{url} redirects to {r.headers.get('Location')!r}; redirects are not followed"
            )
        try:
            r.raise_for_status()
        except requests.HTTPError as exc:
            raise OSError(f"HTTP {r.status_code} from {url}") from exc
        return r.content  # type: ignore[no-any-return]
