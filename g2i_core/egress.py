"""Egress policy of the image fetcher: which URLs a dump may make this machine request, and how.

Image URLs come from untrusted dumps, so every request goes through :func:`open_url`, which

- accepts only ``http`` and ``https`` URLs without credentials (``user:pass@`` is refused);
- resolves the host once (``getaddrinfo``, under the request's deadline) and refuses the URL when any
  resolved address is not globally routable: loopback, private, link-local (cloud metadata at
  169.254.169.254), multicast, unspecified, reserved, shared (100.64/10), and those ranges embedded in
  IPv6 (IPv4-mapped, IPv4-compatible, 6to4, NAT64). The check runs on the *resolved* address, so hex,
  decimal, octal and short IPv4 spellings (``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``127.1``)
  and DNS names pointing inside are caught alike;
- connects to exactly the address it checked (no second lookup, so DNS rebinding cannot swap it),
  while TLS SNI, certificate hostname and the ``Host`` header keep the original host name;
- follows redirects itself, re-checking every hop, at most ``max_redirects`` (3) hops;
- enforces one total deadline per request over DNS, connect, TLS, headers and body: every socket
  operation gets the time that is left as its timeout, so a server trickling bytes cannot hold a worker.

``allow_hosts`` (setting ``fetch_allow_hosts`` / ``G2I_FETCH_ALLOW_HOSTS``: comma-separated ``host`` or
``host:port``) opens specific hosts even when they resolve to loopback or private addresses: an exact,
case-insensitive host match (as written in the URL) and, when given, an exact port match. The demo and
the tests use it for their loopback image server; nothing else should.

Refusals raise ``FetchError("blocked", reason)``; deadline overruns ``FetchError("timeout", ...)``, other
network failures ``FetchError("error", ...)``.
"""

from __future__ import annotations

import http.client
import ipaddress
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote, urljoin, urlsplit

SCHEMES = {"http": 80, "https": 443}
REDIRECTS = frozenset({301, 302, 303, 307, 308})
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not global, not "private" either


class FetchError(Exception):
    """A failed fetch with its ``node_images`` status (``blocked``, ``timeout``, ``error``, ...)."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status = status


# ---- the allow-list ---------------------------------------------------------------------------------------
def parse_allow_hosts(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Normalised ``host`` / ``host:port`` entries from a comma-separated string or an iterable of them."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        host, port = _split_entry(item)
        shown = f"[{host}]" if ":" in host else host
        out.append(f"{shown}:{port}" if port is not None else shown)
    return tuple(dict.fromkeys(out))


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host without brackets, port or None)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:  # a bare IPv6 address or a plain host name
        host, port = entry, ""
    if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
        raise ValueError(f"fetch allow-list entry {entry!r} is not 'host' or 'host:port'")
    return host, int(port) if port else None


def _ip_text(host: str) -> str:
    """An IPv6 entry or URL host in one canonical spelling (so ``::1`` matches ``0:0::1``); others as is."""
    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        return host


@dataclass(frozen=True)
class EgressPolicy:
    allow_hosts: tuple[str, ...] = ()  # parse_allow_hosts() entries: exceptions to the address check
    max_redirects: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_hosts", parse_allow_hosts(self.allow_hosts))

    def allowed(self, host: str, port: int) -> bool:
        host = _ip_text(host.lower())
        for entry in self.allow_hosts:
            h, p = _split_entry(entry)
            if _ip_text(h) == host and (p is None or p == port):
                return True
        return False


# ---- the address check --------------------------------------------------------------------------------------
def refusal(address: str) -> str | None:
    """Why ``address`` (an IP literal) must not be contacted, or None when it is globally routable."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        embedded, form = None, ""
        if ip.ipv4_mapped is not None:
            embedded, form = ip.ipv4_mapped, "IPv4-mapped"
        elif ip.sixtofour is not None:
            embedded, form = ip.sixtofour, "6to4"
        elif ip in NAT64[0]:
            embedded, form = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
        elif int(ip) >> 32 == 0 and int(ip) > 1:
            embedded, form = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-compatible"
        if embedded is not None:
            inner = refusal(str(embedded))
            if inner:
                return f"{ip} is {form}: {inner}"
        if ip in NAT64[1]:
            return f"{ip} is local-use NAT64"
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is {kind.replace('_', '-')}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return f"{ip} is site-local"
    if isinstance(ip, ipaddress.IPv4Address) and ip in SHARED:
        return f"{ip} is shared address space"
    if not ip.is_global:
        return f"{ip} is not globally routable"
    return None


# ---- deadline-bound sockets -----------------------------------------------------------------------------------
def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("request deadline passed")
    return left


class _DeadlineMixin:
    """Every send/receive of the socket gets the time left until ``deadline`` as its timeout."""

    deadline = math.inf

    def _arm(self) -> None:
        self.settimeout(_remaining(self.deadline))

    def recv(self, *args):
        self._arm()
        return super().recv(*args)

    def recv_into(self, *args):
        self._arm()
        return super().recv_into(*args)

    def sendall(self, *args):
        self._arm()
        return super().sendall(*args)

    def send(self, *args):
        self._arm()
        return super().send(*args)


class _DeadlineSocket(_DeadlineMixin, socket.socket):
    pass


class _DeadlineSSLSocket(_DeadlineMixin, ssl.SSLSocket):
    def read(self, *args):  # TLS records are read through here, not recv
        self._arm()
        return super().read(*args)


_TLS: ssl.SSLContext | None = None
_TLS_LOCK = threading.Lock()


def tls_context() -> ssl.SSLContext:
    """The client TLS context (certificate and host name verified), shared by both clients."""
    global _TLS
    with _TLS_LOCK:
        if _TLS is None:
            ctx = ssl.create_default_context()  # verifies the certificate and its host name
            ctx.sslsocket_class = _DeadlineSSLSocket
            _TLS = ctx
        return _TLS


def _connect(addresses: list[tuple], deadline: float) -> socket.socket:
    """A connected deadline socket to the first reachable of the checked ``addresses`` (getaddrinfo rows)."""
    last: Exception | None = None
    for family, type_, proto, _, sockaddr in addresses:
        sock = _DeadlineSocket(family, type_, proto)
        sock.deadline = deadline
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if isinstance(exc, TimeoutError):
                break
    raise last or OSError("no address to connect to")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the pre-resolved, checked addresses; ``self.host`` (the URL's host) stays in ``Host:``."""

    def __init__(self, host: str, port: int, addresses: list[tuple], deadline: float):
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))
        self._addresses, self._deadline = addresses, deadline

    def connect(self) -> None:
        self.sock = _connect(self._addresses, self._deadline)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, addresses: list[tuple], deadline: float):
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001), context=tls_context())
        self._addresses, self._deadline = addresses, deadline

    def connect(self) -> None:
        raw = _connect(self._addresses, self._deadline)
        try:  # the handshake runs under the raw socket's timeout: the time left
            raw.settimeout(_remaining(self._deadline))
            tls = self._context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        tls.deadline = self._deadline
        self.sock = tls


# ---- resolution ---------------------------------------------------------------------------------------------
def _resolve(host: str, port: int, deadline: float) -> list[tuple]:
    """getaddrinfo under the deadline (in a daemon thread: a hung resolver cannot hold the caller)."""
    box: dict[str, object] = {}

    def lookup() -> None:
        try:
            box["ok"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            box["err"] = exc

    worker = threading.Thread(target=lookup, name="fetch-dns", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0))
    if worker.is_alive():
        raise FetchError("timeout", f"DNS lookup of {host!r} did not finish before the deadline")
    if "err" in box:
        exc = box["err"]
        raise FetchError("error", f"DNS lookup of {host!r} failed: {exc}"[:200])
    rows = box["ok"]
    if not rows:
        raise FetchError("error", f"DNS lookup of {host!r} returned no address")
    return rows  # type: ignore[return-value]


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as in the URL (lowercase, no brackets)
    port: int
    path: str  # request target: path?query, ASCII


def check_url(url: str) -> Target:
    """The parts of ``url`` to request; FetchError(blocked) for a scheme, credentials or shape not allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError("blocked", f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise FetchError("blocked", f"scheme {scheme or '(none)'!r} not allowed")
    if "@" in parts.netloc:
        raise FetchError("blocked", "credentials in the URL are not allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchError("blocked", "URL has no host")
    if port == 0:
        raise FetchError("blocked", "port 0 not allowed")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    path = "".join(c if 32 < ord(c) < 127 else quote(c) for c in path)
    return Target(scheme, host, port or SCHEMES[scheme], path)


def check_addresses(host: str, port: int, addresses: list[tuple], policy: EgressPolicy) -> list[tuple]:
    """``addresses`` (getaddrinfo rows for ``host``) when every one may be contacted, or when ``policy``
    allow-lists ``host:port``; else FetchError(blocked) naming the first refused address."""
    if not policy.allowed(host, port):
        for row in addresses:
            reason = refusal(row[4][0])
            if reason:
                literal = _ip_text(host) == _ip_text(row[4][0].split("%", 1)[0])
                raise FetchError("blocked", reason if literal else f"{host}: {reason}")
    return addresses


def _check_hop(target: Target, policy: EgressPolicy, deadline: float) -> list[tuple]:
    """The addresses to connect to for one hop, every one of them checked (unless the host is allow-listed)."""
    return check_addresses(target.host, target.port, _resolve(target.host, target.port, deadline), policy)


class Response:
    """The final (non-redirect) response; ``read`` stays under the request's deadline."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str, hops: int):
        self._conn, self._resp, self.url, self.hops = conn, resp, url, hops
        self.status, self.headers = resp.status, resp.headers

    def read(self, amt: int) -> bytes:
        try:
            return self._resp.read(amt)
        except TimeoutError:
            raise FetchError("timeout", "body not received before the deadline") from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError("error", f"{type(exc).__name__}: {exc}"[:200]) from None

    def close(self) -> None:
        self._resp.close()
        self._conn.close()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_url(url: str, policy: EgressPolicy, timeout_s: float, headers: dict[str, str] | None = None) -> Response:
    """GET ``url`` under ``policy`` with one ``timeout_s`` deadline for the whole request (see module doc)."""
    deadline = time.monotonic() + timeout_s
    hops = 0
    while True:
        target = check_url(url)
        addresses = _check_hop(target, policy, deadline)
        cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        conn = cls(target.host, target.port, addresses, deadline)
        try:
            conn.request("GET", target.path, headers={"Accept-Encoding": "identity", "Connection": "close",
                                                      **(headers or {})})
            resp = conn.getresponse()
        except TimeoutError:
            conn.close()
            raise FetchError("timeout", f"no response within {timeout_s}s") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            raise FetchError("error", f"{type(exc).__name__}: {exc}"[:200]) from None
        location = resp.getheader("Location")
        if resp.status not in REDIRECTS or not location:
            return Response(conn, resp, url, hops)
        resp.close()
        conn.close()
        hops += 1
        if hops > policy.max_redirects:
            raise FetchError("blocked", f"too many redirects (more than {policy.max_redirects})")
        url = urljoin(url, location.strip())
