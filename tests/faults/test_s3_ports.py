"""Fault: anyone who can reach loopback (another local user, or a request forged through the fetcher)
attacks the embedded SeaweedFS through every port `weed mini` listens on.

Only the S3 gateway may answer, and it checks signatures. Every other port (master, volume, filer,
admin, all gRPC) must refuse anonymous requests: the connection fails, the TLS handshake fails for
want of a client certificate of our CA, or the server answers 401/403. Afterwards the bucket still
exists and holds exactly its objects. Ports are discovered from the running process, not assumed.
"""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl
import stat
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.s3

BUCKET = "g2i-ports"
OBJECTS = {"keep/a.txt": b"precious", "keep/deep/b.bin": bytes(range(256)) * 64}
# what a plain-HTTP request gets from a TLS-only Go server (answered before any handler runs)
TLS_ONLY = b"Client sent an HTTP request to an HTTPS server"


def _multipart(name: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "g2iboundary7MA4YWxkTrZu0gW"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _attacks(bucket: str) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    form, form_headers = _multipart("posted.txt", b"evil")
    return [
        ("GET", "/", None, {}),
        ("GET", f"/buckets/{bucket}/", None, {}),                    # filer listing of the bucket
        ("GET", f"/buckets/{bucket}/keep/a.txt", None, {}),           # filer read
        ("GET", "/status", None, {}),                                 # volume server status
        ("GET", "/metrics", None, {}),                                # admin / metrics
        ("GET", "/cluster/status", None, {}),
        ("GET", "/dir/status", None, {}),
        ("GET", "/vol/status", None, {}),
        ("GET", "/dir/assign", None, {}),                             # a write token from the master
        ("POST", f"/buckets/{bucket}/evil/", form, form_headers),     # filer upload
        ("PUT", f"/buckets/{bucket}/evil/put.txt", b"evil", {"Content-Type": "text/plain"}),
        ("DELETE", f"/buckets/{bucket}/keep/a.txt", None, {}),
        ("DELETE", f"/buckets/{bucket}/keep/?recursive=true", None, {}),
        ("GET", f"/col/delete?collection={bucket}", None, {}),        # drops every volume of the bucket
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A private server (the attacks would ruin the shared one if they succeeded) holding two objects."""
    from g2i_core.s3server import S3Server, find_free_base_port

    srv = S3Server(tmp_path_factory.mktemp("s3ports") / "s3", base_port=find_free_base_port(), bucket=BUCKET)
    srv.start(timeout=90)
    client = srv.client()
    for key, body in OBJECTS.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def foreign_cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed client certificate: TLS with a certificate that is not from the server's CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "g2i-s3")])  # even the same name
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("foreign")
    (d / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return d / "c.pem", d / "k.pem"


def _weed_processes(srv) -> list[psutil.Process]:
    proc = psutil.Process(srv.pid())
    return [proc, *proc.children(recursive=True)]


def _listening(srv) -> list[tuple[str, int]]:
    socks = []
    for p in _weed_processes(srv):
        socks += [(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    return sorted(set(socks))


def _request(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str],
             tls: ssl.SSLContext | None) -> tuple[int, bytes] | str:
    """(status, body) of one request, or a string naming how the connection failed."""
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(4096)
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, TLS alert, garbage reply
        return f"connection failed: {type(exc).__name__}"
    finally:
        conn.close()


def _refused(outcome: tuple[int, bytes] | str) -> bool:
    if isinstance(outcome, str):
        return True
    status, body = outcome
    return status in (401, 403) or (status == 400 and TLS_ONLY in body)


def _tls(cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who the server is
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def _speaks_plain_http2(port: int) -> bool:
    """True when the port answers an HTTP/2 client preface with a SETTINGS frame: plaintext gRPC."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(preface)
            data = b""
            while len(data) < 9:
                chunk = s.recv(9 - len(data))
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return len(data) == 9 and data[3] == 0x04


def test_every_port_but_s3_refuses_anonymous_requests(server, foreign_cert):
    socks = _listening(server)
    ports = {port for _, port in socks}
    assert server.s3_port in ports
    others = sorted(ports - {server.s3_port})
    assert len(others) >= 4, f"expected master/volume/filer HTTP and gRPC ports, found {socks}"

    # every socket is bound to loopback only, never to 0.0.0.0 / ::
    assert {ip for ip, _ in socks} == {"127.0.0.1"}, socks

    answered = []
    transports = {"http": None, "tls-without-cert": _tls(), "tls-foreign-cert": _tls(foreign_cert)}
    for port in others:
        for name, tls in transports.items():
            for method, path, body, headers in _attacks(BUCKET):
                outcome = _request(port, method, path, body, headers, tls)
                if not _refused(outcome):
                    answered.append(f"{name} {method} :{port}{path} -> {outcome[0]} {outcome[1][:80]!r}")
        if _speaks_plain_http2(port):
            answered.append(f"plaintext gRPC/HTTP2 answered on :{port}")
    assert not answered, "anonymous requests were served:\n" + "\n".join(answered)

    # the bucket survived the attempts with exactly its objects
    client = server.client()
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    keys = {o["Key"] for o in listed} - {"_health/ping"}
    assert keys == set(OBJECTS)
    for key, data in OBJECTS.items():
        assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data


def _pb(field: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (enough to build the request below without generated code)."""
    def varint(n: int) -> bytes:
        out = b""
        while n > 0x7F:
            out, n = out + bytes([(n & 0x7F) | 0x80]), n >> 7
        return out + bytes([n])
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def test_anonymous_grpc_cannot_add_an_s3_identity(server):
    """The S3 gateway's gRPC service takes identity updates (meant for the filer) with no check of its
    own: one plaintext call would grant an intruder's key full S3 access."""
    import boto3
    import grpc
    from botocore.config import Config
    from botocore.exceptions import ClientError

    access, secret = "G2IINTRUDER", "intruder-secret-0123456789"
    credential = _pb(1, access.encode()) + _pb(2, secret.encode()) + _pb(3, b"Active")
    identity = _pb(1, b"intruder") + _pb(2, credential) + b"".join(
        _pb(3, a) for a in (b"Admin", b"Read", b"Write", b"List"))
    accepted = []
    for _, port in _listening(server):
        if port == server.s3_port:
            continue
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            put = channel.unary_unary("/messaging_pb.SeaweedS3IamCache/PutIdentity")
            try:
                put(_pb(1, identity), timeout=10)
                accepted.append(port)
            except grpc.RpcError:
                pass
    intruder = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=access,
                            aws_secret_access_key=secret,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as err:
        intruder.list_objects_v2(Bucket=BUCKET)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert not accepted, f"plaintext gRPC PutIdentity accepted on ports {accepted}"


def test_s3_gateway_refuses_unsigned_and_wrongly_signed_requests(server):
    port = server.s3_port
    for method, path, body in [("GET", f"/{BUCKET}?list-type=2", None), ("GET", f"/{BUCKET}/keep/a.txt", None),
                               ("PUT", f"/{BUCKET}/evil.txt", b"evil"), ("DELETE", f"/{BUCKET}/keep/a.txt", None),
                               ("GET", "/", None)]:
        outcome = _request(port, method, path, body, {}, None)
        assert not isinstance(outcome, str) and outcome[0] == 403, (method, path, outcome)
    # the STS/IAM API served on the same port
    for form in (b"Action=GetCallerIdentity&Version=2011-06-15",
                 b"Action=AssumeRole&Version=2011-06-15&RoleArn=arn:aws:iam::1:role/admin&RoleSessionName=g2i1"):
        outcome = _request(port, "POST", "/", form, {"Content-Type": "application/x-www-form-urlencoded"}, None)
        assert not isinstance(outcome, str) and outcome[0] == 403, (form, outcome)

    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    access, _ = server.credentials()
    forged = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=access,
                          aws_secret_access_key="not-the-secret", config=Config(s3={"addressing_style": "path"}))
    with pytest.raises(ClientError) as err:
        forged.list_objects_v2(Bucket=BUCKET)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert server.client().get_object(Bucket=BUCKET, Key="keep/a.txt")["Body"].read() == OBJECTS["keep/a.txt"]


def test_files_and_local_sockets_are_private(server):
    root = server.root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "data").stat().st_mode) == 0o700
    for f in root.iterdir():  # credentials, IAM config, security config, keys, pid, log
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    # Unix sockets the server listens on: nobody else may connect (connecting needs write permission)
    paths = {c.laddr for p in _weed_processes(server) for c in p.net_connections(kind="unix")
             if isinstance(c.laddr, str) and c.laddr.startswith("/")}
    assert paths, "weed mini listens on local sockets; none found"
    for path in paths:
        if Path(path).exists():
            assert stat.S_IMODE(Path(path).stat().st_mode) & 0o022 == 0, path
