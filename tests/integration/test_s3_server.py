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
        server.start(timeout=90)  # same folder: same credentials, same data
        assert server.credentials() == access
        assert server.client().get_object(Bucket="persist", Key="k")["Body"].read() == b"survives"
        server.start()  # starting a running server is a no-op
        assert server.is_running()
    finally:
        server.stop()
    assert (tmp_path / "s3" / "credentials.toml").stat().st_mode & 0o077 == 0  # secrets not world-readable


def test_busy_port_is_reported(s3_server, tmp_path):
    clash = S3Server(tmp_path / "other", base_port=s3_server.base_port)
    with pytest.raises(RuntimeError, match="in use"):
        clash.start(timeout=5)
