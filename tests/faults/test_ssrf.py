"""The image fetcher's egress policy against hostile URLs (issue 13: server-side request forgery, Pillow
decoding before the allow-list, header phase without a deadline).

A loopback *canary* HTTP server (its own port, never allow-listed) stands for every internal service a
dump could aim at; it must see zero connections. A second loopback server is allow-listed by
``host:port`` and serves images, redirects, redirect chains and a header trickle. Every hostile URL must
end as status ``blocked`` with a reason, both through ``download`` and through the real ``fetch_images``
job on file storage, with each of the two clients (``async``: aiohttp with connections reused, the
default; ``threads``: one checked connection per request).
"""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from g2i_core.images import FetchConfig, FetchError, download, fetch_images, validate_image

TRICKLE_BYTES = 40  # header bytes sent one at a time, TRICKLE_GAP_S apart (10 s in all)
TRICKLE_GAP_S = 0.25


def _image(fmt: str, size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buf, format=fmt)
    return buf.getvalue()


PNG = _image("PNG")
CLIENTS = ("async", "threads")


class Canary(ThreadingHTTPServer):
    """Counts every connection it accepts (on 127.0.0.1 and, where possible, on ::1 at the same port)."""

    daemon_threads = True

    def __init__(self, address=("127.0.0.1", 0)):
        super().__init__(address, _CanaryHandler)
        self.hits = 0
        self.lock = threading.Lock()

    def verify_request(self, request, client_address):  # called once per accepted connection
        with self.lock:
            self.hits += 1
        return True


class _CanaryV6(Canary):
    address_family = socket.AF_INET6


class _CanaryHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args):
        pass


class _AllowedHandler(BaseHTTPRequestHandler):
    """Images in several formats, redirects (to the canary, and chains of n hops), a header trickle."""

    canary_port = 0
    bodies = {"/img.png": PNG, "/img.bmp": _image("BMP"), "/img.tiff": _image("TIFF"), "/img.eps": _image("EPS")}

    def do_GET(self):  # noqa: N802 - http.server API
        self.server.paths.append(self.path)
        if self.path in self.bodies:
            return self._send(200, self.bodies[self.path])
        if self.path == "/to-canary":
            return self._redirect(f"http://127.0.0.1:{self.canary_port}/stolen")
        if m := re.fullmatch(r"/chain/(\d+)", self.path):
            n = int(m[1])
            return self._redirect(f"/chain/{n - 1}") if n else self._send(200, PNG)
        if self.path == "/trickle":
            return self._trickle()
        return self._send(404, b"missing")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _trickle(self) -> None:
        """A valid response whose header arrives one byte at a time: every single read is quick. Records
        whether the client hung up before the header was complete ("aborted") or took it all."""
        outcome = "completed"
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for b in b"X-Trickle: " + b"a" * (TRICKLE_BYTES - 13) + b"\r\n":
                self.wfile.write(bytes([b]))
                time.sleep(TRICKLE_GAP_S)
            self.wfile.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(PNG) + PNG)
        except OSError:  # the client gave up
            outcome = "aborted"
        self.close_connection = True
        self.server.trickles.append(outcome)
        self.server.trickle_done.set()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def canary():
    servers = [Canary()]
    try:
        servers.append(_CanaryV6(("::1", servers[0].server_address[1])))
    except OSError:  # no IPv6 loopback here: the v4 canary still counts
        pass
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()

    class Hits:
        port = servers[0].server_address[1]

        @property
        def hits(self) -> int:
            return sum(s.hits for s in servers)

    yield Hits()
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="module")
def allowed(canary):
    handler = type("Handler", (_AllowedHandler,), {"canary_port": canary.port})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.paths = []
    server.trickles, server.trickle_done = [], threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    server.entry = f"127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def hostile_urls(canary_port: int, allowed_base: str) -> dict[str, str]:
    """URL -> a pattern its ``blocked`` reason must match."""
    c = canary_port
    return {
        "file:///etc/passwd": r"scheme 'file' not allowed",
        f"ftp://127.0.0.1:{c}/x.png": r"scheme 'ftp' not allowed",
        f"gopher://127.0.0.1:{c}/_GET%20/": r"scheme 'gopher' not allowed",
        f"http://127.0.0.1:{c}/x.png": r"^127\.0\.0\.1 is loopback",
        f"http://localhost:{c}/x.png": r"^localhost: .* is loopback",
        f"http://[::1]:{c}/x.png": r"^::1 is loopback",
        f"http://[::ffff:127.0.0.1]:{c}/x.png": r"IPv4-mapped: 127\.0\.0\.1 is loopback",
        f"http://[64:ff9b::7f00:1]:{c}/x.png": r"NAT64: 127\.0\.0\.1 is loopback",
        f"http://[2002:7f00:1::]:{c}/x.png": r"6to4: 127\.0\.0\.1 is loopback",
        f"http://0x7f000001:{c}/x.png": r"^0x7f000001: 127\.0\.0\.1 is loopback",
        f"http://2130706433:{c}/x.png": r"^2130706433: 127\.0\.0\.1 is loopback",
        f"http://127.1:{c}/x.png": r"^127\.1: 127\.0\.0\.1 is loopback",
        f"http://0177.0.0.1:{c}/x.png": r"^0177\.0\.0\.1: 127\.0\.0\.1 is loopback",
        f"http://0.0.0.0:{c}/x.png": r"^0\.0\.0\.0 is unspecified",
        "http://169.254.169.254/latest/meta-data/": r"169\.254\.169\.254 is link-local",
        "http://10.0.0.1/x.png": r"10\.0\.0\.1 is private",
        "http://192.168.1.1/x.png": r"192\.168\.1\.1 is private",
        "http://100.64.0.1/x.png": r"100\.64\.0\.1 is shared address space",
        f"http://user:pw@127.0.0.1:{c}/x.png": r"credentials in the URL are not allowed",
        f"http://user@{allowed_base[len('http://'):]}/img.png": r"credentials in the URL are not allowed",
        f"{allowed_base}/to-canary": r"^127\.0\.0\.1 is loopback",  # an allowed host redirects inside
        f"{allowed_base}/chain/4": r"too many redirects",
    }


def _cfg(allowed, **kw) -> FetchConfig:
    base = dict(timeout_s=1.5, retries=2, backoff_s=0.01, concurrency=8, per_host_rate=0,
                allow_hosts=(allowed.entry,), max_failure_fraction=1.0)
    return FetchConfig(**(base | kw))


@pytest.mark.parametrize("client", CLIENTS)
def test_every_hostile_url_is_blocked_by_download_and_the_canary_sees_nothing(canary, allowed, client):
    cfg = _cfg(allowed, client=client)
    for url, reason in hostile_urls(canary.port, allowed.base).items():
        with pytest.raises(FetchError) as err:
            download(url, cfg)
        assert err.value.status == "blocked", (url, err.value.status, str(err.value))
        assert re.search(reason, str(err.value)), (url, str(err.value))
    assert canary.hits == 0


def _publish_nodes(storage, urls: list[str]) -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist([{"node_id": f"n{i:03d}", "image_url": u, "has_real_image": True}
                                  for i, u in enumerate(urls)])
    storage.publish_table("nodes", table, "nodes-run")


@pytest.mark.parametrize("client", CLIENTS)
def test_fetch_images_job_blocks_every_hostile_url_and_fetches_the_allowed_host(file_storage, canary, allowed, client):
    hostile = hostile_urls(canary.port, allowed.base)
    good = {f"{allowed.base}/img.png": "ok", f"{allowed.base}/chain/3": "ok"}  # 3 hops: still allowed
    _publish_nodes(file_storage, [*hostile, *good])
    report = fetch_images(file_storage, file_storage, _cfg(allowed, client=client))
    rows = {r["image_url"]: r for r in file_storage.read_table("node_images").to_pylist()}
    for url, reason in hostile.items():
        row = rows[url]
        assert row["status"] == "blocked" and re.search(reason, row["error"]), row
        assert row["error"].endswith("(attempt 1)"), row  # a refusal is final: never retried
        assert row["image_key"] is None
    for url in good:
        assert rows[url]["status"] == "ok" and rows[url]["image_key"], rows[url]
    assert report.by_status == {"blocked": len(hostile), "ok": len(good)}
    assert canary.hits == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_the_allow_list_is_exact_and_only_it_opens_loopback(canary, allowed, client):
    url = f"{allowed.base}/img.png"
    before = len(allowed.paths)
    for allow in ((), ("127.0.0.1:1",), ("localhost",), ("127.0.0.2",)):  # wrong port, other names
        with pytest.raises(FetchError) as err:
            download(url, _cfg(allowed, allow_hosts=allow, client=client))
        assert err.value.status == "blocked" and "loopback" in str(err.value)
    assert len(allowed.paths) == before  # refused before connecting
    assert download(url, _cfg(allowed, client=client)) == PNG
    assert download(url, _cfg(allowed, allow_hosts=("127.0.0.1",), client=client)) == PNG  # no port: any port
    assert canary.hits == 0


def test_the_allow_list_setting_reaches_the_cli(tmp_path, monkeypatch, canary, allowed):
    """G2I_FETCH_ALLOW_HOSTS is the one way to open the loopback server for `g2i fetch-images`."""
    from g2i_core.cli import main
    from g2i_core.storage import Storage

    root = f"file://{tmp_path}/store"
    _publish_nodes(Storage(root), [f"{allowed.base}/img.png"])
    monkeypatch.delenv("G2I_FETCH_ALLOW_HOSTS", raising=False)
    args = ["fetch-images", "--in", root, "--timeout", "2", "--retries", "0"]
    assert main(args) == 1  # blocked: 1 of 1 failed, above --max-failure-fraction
    assert not Storage(root).is_published("node_images")
    monkeypatch.setenv("G2I_FETCH_ALLOW_HOSTS", f"example.org, {allowed.entry}")
    assert main(args) == 0
    assert Storage(root).read_table("node_images").column("status").to_pylist() == ["ok"]
    assert canary.hits == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_a_header_trickle_ends_as_timeout_at_the_request_deadline(allowed, client):
    """One byte every 0.25 s keeps every single read under any per-read timeout; only a total deadline
    covering the header phase stops it. The server sees the fetcher hang up *during* the header (a
    fetcher without that deadline takes the whole 10 s header and only then notices the time)."""
    allowed.trickle_done.clear()
    with pytest.raises(FetchError) as err:
        download(f"{allowed.base}/trickle", _cfg(allowed, timeout_s=1.5, client=client))
    assert err.value.status == "timeout", str(err.value)
    assert allowed.trickle_done.wait(60)
    assert allowed.trickles[-1] == "aborted"


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "EPS"])
def test_formats_outside_the_allow_list_are_never_parsed_by_pillow(fmt, monkeypatch, allowed, file_storage):
    """The BMP/TIFF/EPS plugin must never see the bytes (formats= on Image.open), not merely be refused
    after it decoded them: a spy on each plugin's header parser records any call."""
    from PIL import BmpImagePlugin, EpsImagePlugin, TiffImagePlugin

    opened: list[str] = []
    for cls in (BmpImagePlugin.BmpImageFile, TiffImagePlugin.TiffImageFile, EpsImagePlugin.EpsImageFile):
        real = cls._open

        def spy(self, _real=real, _name=cls.format):
            opened.append(_name)
            return _real(self)

        monkeypatch.setattr(cls, "_open", spy)
    data = _image(fmt)
    with pytest.raises(FetchError) as err:
        validate_image(data, max_pixels=10**6)
    assert err.value.status == "corrupt" and "PNG, JPEG, GIF, WEBP" in str(err.value)
    url = f"{allowed.base}/img.{fmt.lower()}"
    _publish_nodes(file_storage, [url])
    fetch_images(file_storage, file_storage, _cfg(allowed))
    row = file_storage.read_table("node_images").to_pylist()[0]
    assert row["status"] == "corrupt" and row["image_key"] is None, row
    assert opened == []


def _self_signed(tmp_path, name: str = "localhost"):
    """A CA file and a key+certificate for ``name`` only (DNS SAN, no IP SAN)."""
    pytest.importorskip("cryptography")  # comes with Airflow
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.parametrize("client", CLIENTS)
def test_https_pins_the_checked_address_but_verifies_the_url_host(tmp_path, monkeypatch, canary, client):
    """TLS to an allow-listed host: connect to the resolved 127.0.0.1, send SNI and verify the
    certificate for the URL's host name; the total deadline also holds for a header trickle over TLS."""
    import ssl

    from g2i_core import egress

    cert_file, key_file = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # trust our CA for the client context ...
    monkeypatch.setattr(egress, "_TLS", None)  # ... built afresh for this test
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_AllowedHandler,), {"canary_port": canary.port}))
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    server.paths, server.trickles, server.trickle_done = [], [], threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        cfg = FetchConfig(timeout_s=1.5, retries=0, allow_hosts=(f"localhost:{port}", f"127.0.0.1:{port}"),
                          client=client)
        assert download(f"https://localhost:{port}/img.png", cfg) == PNG
        assert names == ["localhost"]
        with pytest.raises(FetchError) as err:  # the certificate names localhost, not the IP
            download(f"https://127.0.0.1:{port}/img.png", cfg)
        assert err.value.status == "error" and "certificate" in str(err.value).lower()
        with pytest.raises(FetchError) as err:
            download(f"https://localhost:{port}/trickle", cfg)
        assert err.value.status == "timeout"
        assert server.trickle_done.wait(60) and server.trickles[-1] == "aborted"
        with pytest.raises(FetchError) as err:  # and without the allow-list entry: refused before TLS
            download(f"https://localhost:{port}/img.png", FetchConfig(timeout_s=1.5, retries=0, client=client))
        assert err.value.status == "blocked"
    finally:
        server.shutdown()
        server.server_close()
    assert canary.hits == 0
