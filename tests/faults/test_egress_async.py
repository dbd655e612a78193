"""The async fetch client (g2i_core.egress_async) keeps every egress rule while it reuses connections.

Against a loopback HTTP/1.1 keep-alive server (allow-listed by ``127.0.0.1:<port>`` only) that counts
connections and requests:

- the resolver refuses a name whose addresses include a non-global one, returns only checked
  addresses, looks a host up once per TTL (a rebinding answer after the TTL is checked again);
- a pooled connection of the allowed ``host:port`` is never used for another name of the same address
  (``localhost``, ``[::ffff:127.0.0.1]``, ``127.1``): those are refused and open nothing;
- a redirect from the allowed host to loopback is blocked without a connection to the target;
- proxy variables are ignored, bodies are capped while streaming and never decompressed, and one deadline
  covers a DNS lookup that hangs.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from g2i_core import egress_async
from g2i_core.egress import EgressPolicy, FetchError
from g2i_core.egress_async import CheckedResolver, EgressSession
from g2i_core.images import FetchConfig, download

PUBLIC = "93.184.216.34"  # a globally routable address (never connected to: the tests stop at the check)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


class _KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    target = ""  # where /redirect points

    def do_GET(self):  # noqa: N802 - http.server API
        self.server.requests.append((self.headers.get("Host"), self.path))
        if self.path == "/img.png":
            return self._send(200, PNG)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if self.path == "/big-declared":
            return self._send(200, b"x" * 5000)
        if self.path == "/big-undeclared":  # no Content-Length: the body ends when the connection closes
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:  # far more than the socket buffers hold: a client that stops reading makes a write fail
                for _ in range(16_384):
                    self.wfile.write(b"x" * 65_536)
            except OSError:  # the client hung up past its cap
                self.server.aborted.set()
            return None
        if self.path == "/gzip":
            body = gzip.compress(b"\0" * 1_000_000)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        return self._send(404, b"missing")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.connections, self.requests, self.aborted = 0, [], threading.Event()

    def verify_request(self, request, client_address):  # once per accepted connection
        self.connections += 1
        return True


def _serve(handler=_KeepAliveHandler) -> _CountingServer:
    server = _CountingServer(handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def canary():
    server = _serve()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def keepalive(canary):
    handler = type("H", (_KeepAliveHandler,), {"target": f"http://127.0.0.1:{canary.server_address[1]}/img.png"})
    server = _serve(handler)
    server.port = server.server_address[1]
    server.entry = f"127.0.0.1:{server.port}"
    yield server
    server.shutdown()
    server.server_close()


def _run(coro):
    return asyncio.run(coro)


# ---- the resolver -------------------------------------------------------------------------------------------
def _fake_dns(monkeypatch, answers: list[list[str]]):
    """socket.getaddrinfo for names returns the next answer (a list of IPs); calls are recorded."""
    calls: list[str] = []
    real = socket.getaddrinfo

    def fake(host, port, family=0, type=0, proto=0, flags=0):
        if flags & socket.AI_NUMERICHOST or host.replace(".", "").isdigit():
            return real(host, port, family, type, proto, flags)
        calls.append(host)
        ips = answers[min(len(calls), len(answers)) - 1]
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (ip, port, 0, 0) if ":" in ip else (ip, port)) for ip in ips]

    monkeypatch.setattr(egress_async.socket, "getaddrinfo", fake)
    return calls


def test_resolver_refuses_a_name_with_any_private_address_and_returns_only_checked_ones(monkeypatch):
    _fake_dns(monkeypatch, [[PUBLIC, "10.1.2.3"]])
    resolver = CheckedResolver(EgressPolicy())
    with pytest.raises(FetchError) as err:
        _run(resolver.resolve("mixed.example", 80))
    assert err.value.status == "blocked" and "mixed.example: 10.1.2.3 is private" in str(err.value)

    _fake_dns(monkeypatch, [[PUBLIC]])
    rows = _run(CheckedResolver(EgressPolicy()).resolve("public.example", 443))
    assert [(r["host"], r["port"], r["hostname"]) for r in rows] == [(PUBLIC, 443, "public.example")]


def test_resolver_looks_up_once_per_ttl_and_checks_a_rebinding_answer_again(monkeypatch):
    """Within the TTL every request uses the one checked answer (no second lookup a rebinding DNS could
    answer differently); after it, the new answer (loopback) is checked and refused."""
    calls = _fake_dns(monkeypatch, [[PUBLIC], ["127.0.0.1"]])
    resolver = CheckedResolver(EgressPolicy(), dns_ttl_s=0.3)

    async def scenario():
        first = await asyncio.gather(*[resolver.resolve("rebind.example", 80) for _ in range(5)])
        assert all(r[0]["host"] == PUBLIC for r in first)
        assert calls == ["rebind.example"]  # five concurrent requests, one lookup
        await asyncio.sleep(0.4)
        with pytest.raises(FetchError) as err:
            await resolver.resolve("rebind.example", 80)
        return err.value

    refused = _run(scenario())
    assert refused.status == "blocked" and "127.0.0.1 is loopback" in str(refused)
    assert calls == ["rebind.example"] * 2


def test_a_failed_lookup_is_not_cached_but_a_refusal_is(monkeypatch):
    calls: list[str] = []
    real = socket.getaddrinfo

    def failing(host, port, family=0, type=0, proto=0, flags=0):
        if flags & socket.AI_NUMERICHOST:
            return real(host, port, family, type, proto, flags)
        calls.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(egress_async.socket, "getaddrinfo", failing)
    resolver = CheckedResolver(EgressPolicy())
    for _ in range(2):
        with pytest.raises(FetchError) as err:
            _run(resolver.resolve("flaky.example", 80))
        assert err.value.status == "error"
    assert calls == ["flaky.example"] * 2  # a retry looks up again

    calls = _fake_dns(monkeypatch, [["192.168.0.7"]])
    resolver = CheckedResolver(EgressPolicy())

    async def twice():
        for _ in range(2):
            with pytest.raises(FetchError, match="192.168.0.7 is private"):
                await resolver.resolve("inside.example", 80)

    _run(twice())
    assert calls == ["inside.example"]


def test_one_deadline_covers_a_dns_lookup_that_hangs(monkeypatch):
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host, port, family=0, type=0, proto=0, flags=0):
        if flags & socket.AI_NUMERICHOST:  # a numeric check never waits for DNS
            return real(host, port, family, type, proto, flags)
        release.wait(30)
        raise socket.gaierror("gave up")

    monkeypatch.setattr(egress_async.socket, "getaddrinfo", hanging)
    started = time.monotonic()
    try:
        with pytest.raises(FetchError) as err:
            download("http://hangs.example/x.png", FetchConfig(timeout_s=0.5, retries=0))
    finally:
        release.set()
    assert err.value.status == "timeout"
    assert time.monotonic() - started < 5


# ---- connection reuse --------------------------------------------------------------------------------------
def test_a_pooled_connection_is_never_reused_for_another_name_of_the_same_address(keepalive, canary):
    """After a fetch from the allowed 127.0.0.1:<port> its connection sits in the pool; other spellings of
    the same address are refused (not allow-listed) and neither open nor borrow a connection."""
    policy = EgressPolicy(allow_hosts=(keepalive.entry,))
    port = keepalive.port

    async def scenario():
        async with EgressSession(policy, timeout_s=3) as session:
            assert (await session.get(f"http://127.0.0.1:{port}/img.png", 1 << 20)).body == PNG
            refused = []
            for host in ("localhost", "[::ffff:127.0.0.1]", "127.1", "0x7f000001", "LOCALHOST."):
                with pytest.raises(FetchError) as err:
                    await session.get(f"http://{host}:{port}/img.png", 1 << 20)
                refused.append((err.value.status, str(err.value)))
            again = await session.get(f"http://127.0.0.1:{port}/img.png", 1 << 20)
            return refused, again

    refused, again = _run(scenario())
    assert all(status == "blocked" and "loopback" in reason for status, reason in refused), refused
    assert again.body == PNG
    assert keepalive.connections == 1  # the allowed host reused its one connection ...
    assert keepalive.requests == [(keepalive.entry, "/img.png")] * 2  # ... and nothing else was sent
    assert canary.connections == 0


def test_idle_connections_are_kept_for_a_bounded_number_of_hosts(keepalive, canary):
    """With room for one keep-alive host, the first host keeps its connection and a second host's
    connections are closed after each response (a dump of many hosts cannot pile up idle sockets)."""
    first, second = f"127.0.0.1:{keepalive.port}", f"127.0.0.1:{canary.server_address[1]}"
    policy = EgressPolicy(allow_hosts=(first, second))

    async def scenario():
        async with EgressSession(policy, timeout_s=3, keepalive_hosts=1) as session:
            for entry in (first, second, second, first, second):
                assert (await session.get(f"http://{entry}/img.png", 1 << 20)).body == PNG

    _run(scenario())
    assert (keepalive.connections, len(keepalive.requests)) == (1, 2)
    assert (canary.connections, len(canary.requests)) == (3, 3)


def test_a_redirect_from_the_allowed_host_to_loopback_is_blocked(keepalive, canary):
    for client in ("async", "threads"):
        cfg = FetchConfig(timeout_s=3, retries=0, allow_hosts=(keepalive.entry,), client=client)
        with pytest.raises(FetchError) as err:
            download(f"http://{keepalive.entry}/redirect", cfg)
        assert err.value.status == "blocked" and str(err.value).startswith("127.0.0.1 is loopback"), str(err.value)
    assert canary.connections == 0


def test_proxy_variables_are_ignored(keepalive, canary, monkeypatch):
    proxy = f"http://127.0.0.1:{canary.server_address[1]}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    for client in ("async", "threads"):
        cfg = FetchConfig(timeout_s=3, retries=0, allow_hosts=(keepalive.entry,), client=client)
        assert download(f"http://{keepalive.entry}/img.png", cfg) == PNG
    assert canary.connections == 0


# ---- body limits --------------------------------------------------------------------------------------------
def test_bodies_are_capped_while_streaming_and_never_decompressed(keepalive):
    cfg = FetchConfig(timeout_s=3, retries=0, allow_hosts=(keepalive.entry,), max_bytes=4096)
    base = f"http://{keepalive.entry}"
    with pytest.raises(FetchError, match=r"Content-Length 5000 > max_bytes 4096") as err:
        download(f"{base}/big-declared", cfg)
    assert err.value.status == "too_large"
    with pytest.raises(FetchError, match=r"body exceeds max_bytes 4096") as err:
        download(f"{base}/big-undeclared", cfg)
    assert err.value.status == "too_large"
    assert keepalive.aborted.wait(10)  # the client hung up instead of taking the rest
    body = download(f"{base}/gzip", FetchConfig(timeout_s=3, retries=0, allow_hosts=(keepalive.entry,)))
    assert body[:2] == b"\x1f\x8b" and len(body) < 10_000  # the compressed bytes, as sent
