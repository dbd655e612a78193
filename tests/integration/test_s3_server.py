import stat

import pytest

from g2i_core.s3server import S3Server, find_free_base_port

pytestmark = pytest.mark.s3


def test_start_stop_restart_keeps_data(tmp_path):
    server = S3Server(tmp_path / "s3", base_port=find_free_base_port(), bucket="persist")
    try:
        server.start(timeout=90)
        assert server.is_running()
        server.client().put_object(Bucket="persist", Key="k", Body=b"survives")
        access = server.credentials()
        server.stop()
        assert not server.is_running()
        from botocore.exceptions import EndpointConnectionError

        with pytest.raises(EndpointConnectionError):
            server.client().head_bucket(Bucket="persist")
        keys = (tmp_path / "s3" / "security.toml").read_text()
        server.start(timeout=90)  # same folder: same credentials, same data
        assert server.credentials() == access
        # the internal TLS certificate and JWT keys are made afresh on every start
        assert (tmp_path / "s3" / "security.toml").read_text() != keys
        assert server.client().get_object(Bucket="persist", Key="k")["Body"].read() == b"survives"
        server.start()  # starting a running server is a no-op
        assert server.is_running()
    finally:
        server.stop()
    for secret in ("credentials.toml", "s3.json", "security.toml", "tls/node.key"):
        assert (tmp_path / "s3" / secret).stat().st_mode & 0o077 == 0, secret  # secrets not world-readable


def test_folder_of_an_older_version_is_made_private(tmp_path):
    """Data written by a version that ran weed with the default umask is tightened on the next start."""
    root = tmp_path / "s3"
    (root / "data" / "sub").mkdir(parents=True)
    root.chmod(0o755)
    (root / "data").chmod(0o755)
    old = root / "data" / "sub" / "old.dat"
    old.write_bytes(b"x")
    old.chmod(0o644)
    server = S3Server(root, base_port=find_free_base_port(), bucket="tight")
    try:
        server.start(timeout=90)
        for p in (root, root / "data", root / "data" / "sub"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
        assert stat.S_IMODE(old.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.log_file.stat().st_mode) == 0o600
    finally:
        server.stop()


def test_busy_port_is_reported(s3_server, tmp_path):
    clash = S3Server(tmp_path / "other", base_port=s3_server.base_port)
    with pytest.raises(RuntimeError, match="in use"):
        clash.start(timeout=5)
