"""The egress policy of :mod:`g2i_core.egress` for the asyncio image fetcher (aiohttp, connections reused).

The same rules as :func:`g2i_core.egress.open_url`, kept by construction rather than by a hand-made socket:

- **Every address aiohttp can connect to has been checked.** aiohttp resolves names only through the
  connector's resolver; :class:`CheckedResolver` resolves once (``getaddrinfo`` in a daemon thread, so a
  hung resolver holds neither the event loop nor interpreter exit), runs :func:`egress.check_addresses`
  on every address, and returns only checked ones; a refusal raises ``FetchError("blocked")``. aiohttp
  connects to an IP-literal host (``127.0.0.1``, ``[::1]``) without asking the resolver, so
  :func:`check_literal` checks every host that is, or could be taken for, an address (any numeric
  spelling, anything with a ``:``) before the request is made, on the host as aiohttp parsed it.
- **Connect to the checked IP, SNI and Host from the URL**: aiohttp connects to the resolver's addresses
  and sends the URL's host as SNI, certificate name and ``Host``.
- **Connection reuse stays per host**: aiohttp pools connections by (URL host, port, TLS), so a
  connection opened for a checked or allow-listed ``host:port`` is only ever reused for that same
  ``host:port``; another name for the same address gets its own check. Idle connections are kept for
  at most ``keepalive_hosts`` recent hosts, so a dump naming thousands of hosts cannot use up file
  descriptors with idle sockets.
- **Resolved results are cached** per (host, port) for ``dns_ttl_s`` (refusals too); a failed lookup is
  not cached, so a retry looks up again. Concurrent lookups of one host share one thread.
- Redirects are not followed by aiohttp (``allow_redirects=False``): :meth:`EgressSession.get` follows
  them itself, each hop checked again, at most ``policy.max_redirects``.
- Proxies are ignored (``trust_env=False``), cookies are not kept, bodies are not decompressed
  (``Accept-Encoding: identity`` and ``auto_decompress=False``: a gzip bomb stays its compressed size).
- **One deadline per request** (``timeout_s``) covers DNS, connect, TLS, headers, every redirect and the
  body; the body is read in chunks and abandoned past ``max_bytes`` (``FetchError("too_large")``).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from g2i_core.egress import REDIRECTS, EgressPolicy, FetchError, check_addresses, check_url, tls_context

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

READ_CHUNK = 1 << 16
MAX_CACHED_HOSTS = 4096  # past this, finished lookups are dropped (a hostile dump may name millions of hosts)
KEEPALIVE_HOSTS = 64  # hosts whose idle connections are kept (file descriptors stay bounded)
KEEPALIVE_S = 10.0  # an idle kept connection is closed after this


def _numeric(host: str, port: int) -> list[tuple] | None:
    """getaddrinfo rows for ``host`` when it is an address in any spelling (no DNS: AI_NUMERICHOST)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                                  flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None


def check_literal(host: str, port: int, policy: EgressPolicy) -> None:
    """FetchError(blocked) unless ``host`` (as aiohttp parsed it) is a name the resolver will check, or an
    address that may be contacted. aiohttp treats a host with a ``:`` or of digits and dots as an address
    and connects to it directly, so every such host, and every other numeric spelling, is checked here."""
    rows = _numeric(host, port)
    if rows is None:
        if ":" in host or host.replace(".", "").isdigit():
            raise FetchError("blocked", f"{host!r} is not a valid IP address")
        return  # a name: CheckedResolver checks what it resolves to
    check_addresses(host.rstrip("."), port, rows, policy)


@dataclass
class _Lookup:
    outcome: asyncio.Future  # ("ok", rows) | ("blocked", reason) | ("error", detail)
    expires: float


class CheckedResolver(AbstractResolver):
    """aiohttp resolver that returns only addresses the egress policy allows (see the module doc)."""

    def __init__(self, policy: EgressPolicy, dns_ttl_s: float = 60.0):
        self.policy, self.dns_ttl_s = policy, dns_ttl_s
        self._lookups: dict[tuple[str, int, int], _Lookup] = {}

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        key = (host.lower().rstrip("."), port, int(family))  # "example.com." is example.com, as in check_url
        entry = self._lookups.get(key)
        now = time.monotonic()
        if entry is None or (entry.outcome.done() and (entry.expires < now or entry.outcome.result()[0] == "error")):
            entry = self._start(key, now)
        # shield: one waiter reaching its deadline must not cancel the lookup others share
        kind, value = await asyncio.shield(entry.outcome)
        if kind != "ok":
            raise FetchError(kind, value)
        return [ResolveResult(hostname=host, host=row[4][0], port=row[4][1], family=row[0], proto=row[2],
                              flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV) for row in value]

    def _start(self, key: tuple[str, int, int], now: float) -> _Lookup:
        if len(self._lookups) >= MAX_CACHED_HOSTS:
            self._lookups = {k: v for k, v in self._lookups.items() if not v.outcome.done()}
        loop = asyncio.get_running_loop()
        entry = _Lookup(loop.create_future(), now + self.dns_ttl_s)
        self._lookups[key] = entry
        host, port, family = key
        policy = self.policy

        def settle(outcome: tuple[str, object]) -> None:
            if not entry.outcome.done():
                entry.outcome.set_result(outcome)

        def lookup() -> None:
            try:
                rows = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
                outcome = ("ok", check_addresses(host, port, rows, policy)) if rows else \
                    ("error", f"DNS lookup of {host!r} returned no address")
            except FetchError as exc:
                outcome = (exc.status, str(exc))
            except Exception as exc:  # noqa: BLE001 - handed to the waiters
                outcome = ("error", f"DNS lookup of {host!r} failed: {exc}"[:200])
            try:
                loop.call_soon_threadsafe(settle, outcome)
            except RuntimeError:  # the loop is gone (the job ended while DNS hung): nobody waits
                pass

        threading.Thread(target=lookup, name="fetch-dns", daemon=True).start()
        return entry

    async def close(self) -> None:
        self._lookups.clear()


@dataclass
class Fetched:
    """A final (non-redirect) response; ``body`` is read only for 2xx statuses."""

    status: int
    headers: "CIMultiDictProxy[str]"
    body: bytes
    url: str
    hops: int


class EgressSession:
    """``async with EgressSession(policy, timeout_s) as s: await s.get(url, max_bytes)`` — aiohttp under the
    egress policy (see the module doc), with connections reused per host.

    Idle connections stay bounded on a dump that names many hosts: at most ``keepalive_hosts`` hosts used
    within the last ``keepalive_s`` keep theirs (an idle one closes after ``keepalive_s``); a request to any
    other host goes through a second connector that closes every connection after its response."""

    def __init__(self, policy: EgressPolicy, timeout_s: float, max_connections: int = 64,
                 headers: dict[str, str] | None = None, dns_ttl_s: float = 60.0,
                 keepalive_hosts: int = KEEPALIVE_HOSTS, keepalive_s: float = KEEPALIVE_S):
        self.policy, self.timeout_s, self.max_connections = policy, timeout_s, max_connections
        self.keepalive_hosts, self.keepalive_s = keepalive_hosts, keepalive_s
        self.headers = {**(headers or {}), "Accept-Encoding": "identity"}
        self.resolver = CheckedResolver(policy, dns_ttl_s)
        self._literal_checked: dict[tuple[str, int], str | None] = {}  # (host, port) -> refusal or None
        self._kept: OrderedDict[tuple[str, str, int], float] = OrderedDict()  # keep-alive hosts -> last use
        self._pooled: aiohttp.ClientSession | None = None
        self._oneshot: aiohttp.ClientSession | None = None

    def _new_session(self, force_close: bool) -> aiohttp.ClientSession:
        # enable_cleanup_closed: Python < 3.12.8 keeps a closed TLS socket open while it waits (up to 30 s)
        # for the peer's close_notify, so a server trickling bytes would keep it; aiohttp then aborts such
        # sockets within 2 s, and at once when the session closes
        connector = aiohttp.TCPConnector(
            resolver=self.resolver, use_dns_cache=False, ssl=tls_context(), limit=self.max_connections,
            limit_per_host=0, force_close=force_close, keepalive_timeout=None if force_close else self.keepalive_s,
            enable_cleanup_closed=sys.version_info < (3, 12, 8))
        return aiohttp.ClientSession(
            connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None), raise_for_status=False)

    async def __aenter__(self) -> "EgressSession":
        self._pooled, self._oneshot = self._new_session(False), self._new_session(True)
        return self

    async def __aexit__(self, *exc) -> None:
        for session in (self._pooled, self._oneshot):
            if session is not None:
                await session.close()
        self._pooled = self._oneshot = None

    def _session_for(self, url: URL) -> aiohttp.ClientSession:
        """The pooled session while ``url``'s host is one of the recent keep-alive hosts (or room is left)."""
        key, now = (url.scheme, url.raw_host or "", url.port or 0), time.monotonic()
        while self._kept and next(iter(self._kept.values())) < now - self.keepalive_s:
            self._kept.popitem(last=False)
        if key in self._kept or len(self._kept) < self.keepalive_hosts:
            self._kept[key] = now
            self._kept.move_to_end(key)
            return self._pooled
        return self._oneshot

    async def get(self, url: str, max_bytes: int) -> Fetched:
        """GET ``url``: redirects followed and re-checked, the body of a 2xx read up to ``max_bytes``, all
        within one ``timeout_s`` deadline; FetchError(blocked | timeout | too_large | error) otherwise."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(url, max_bytes)
        except TimeoutError:
            raise FetchError("timeout", f"no complete response within {self.timeout_s}s") from None

    def _request_url(self, url: str) -> URL:
        """``url`` as aiohttp will request it, after the scheme/credentials check and the literal check."""
        check_url(url)  # scheme, credentials, port 0: the same refusals as the threaded client
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as exc:
            raise FetchError("blocked", f"malformed URL: {exc}"[:200]) from None
        # the check runs on the host aiohttp will connect to, in aiohttp's own parsing
        if parsed.scheme not in ("http", "https") or parsed.user is not None or not parsed.raw_host:
            raise FetchError("blocked", f"URL {url[:100]!r} is not plain http(s) with a host")
        key = (parsed.raw_host, parsed.port or 0)
        if key not in self._literal_checked:  # the outcome depends on the host and port only
            if len(self._literal_checked) >= MAX_CACHED_HOSTS:
                self._literal_checked.clear()
            try:
                check_literal(*key, self.policy)
                self._literal_checked[key] = None
            except FetchError as exc:
                self._literal_checked[key] = str(exc)
        if (reason := self._literal_checked[key]) is not None:
            raise FetchError("blocked", reason)
        return parsed

    async def _follow(self, url: str, max_bytes: int) -> Fetched:
        assert self._pooled is not None, "use EgressSession inside `async with`"
        hops = 0
        while True:
            request_url = self._request_url(url)
            try:
                session = self._session_for(request_url)
                resp = await session.get(request_url, allow_redirects=False, headers=self.headers)
            except (FetchError, TimeoutError):
                raise
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise FetchError("error", f"{type(exc).__name__}: {exc}"[:200]) from None
            finished = False
            try:
                location = resp.headers.get("Location")
                if resp.status in REDIRECTS and location:
                    hops += 1
                    if hops > self.policy.max_redirects:
                        raise FetchError("blocked", f"too many redirects (more than {self.policy.max_redirects})")
                    url = urljoin(url, location.strip())
                    finished = True
                    continue
                body = await self._read(resp, max_bytes) if 200 <= resp.status < 300 else b""
                finished = True
                return Fetched(resp.status, resp.headers, body, url, hops)
            finally:
                # release: back to the pool only when the body was read to its end (aiohttp closes it
                # otherwise); after an error, a timeout or a cut-off body the connection is closed outright
                if finished:
                    resp.release()
                else:
                    resp.close()

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
        declared = resp.content_length or 0
        if declared > max_bytes:
            raise FetchError("too_large", f"Content-Length {declared} > max_bytes {max_bytes}")
        chunks, size = [], 0
        try:
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("too_large", f"body exceeds max_bytes {max_bytes}")
                chunks.append(chunk)
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError("error", f"{type(exc).__name__}: {exc}"[:200]) from None
        return b"".join(chunks)
