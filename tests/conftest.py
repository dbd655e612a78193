"""Shared fixtures: a real SeaweedFS S3 server on a free loopback port, a real local Spark session,
and sample dumps. Each is session-scoped and started once, only when a test asks for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from g2i_core.config import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A private S3 server (own folder, own credentials, free ports); stopped at session end."""
    from g2i_core.s3server import S3Server, find_free_base_port

    server = S3Server(tmp_path_factory.mktemp("s3server"), base_port=find_free_base_port(), bucket="g2i-test")
    server.start(timeout=90)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_settings(s3_server, tmp_path_factory) -> Settings:
    access, secret = s3_server.credentials()
    return Settings.load(
        storage_root=f"s3://{s3_server.bucket}",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=access,
        s3_secret_key=secret,
        s3_max_attempts=3,
        spark_local_dir=str(tmp_path_factory.mktemp("spark-local")),
    )


@pytest.fixture
def s3_storage(s3_settings, request):
    """Storage under a unique prefix of the test bucket, so tests never see each other's objects."""
    from g2i_core.storage import Storage

    name = request.node.name.replace("[", "_").replace("]", "_")
    return Storage.from_settings(s3_settings, root=f"{s3_settings.storage_root}/tests/{name}")


@pytest.fixture
def file_storage(tmp_path):
    from g2i_core.storage import Storage

    return Storage(f"file://{tmp_path}/store")


@pytest.fixture(scope="session")
def spark(s3_settings):
    """One local[2] Spark session for the test run, wired to the test S3 server."""
    from g2i_core.spark import get_spark

    session = get_spark(s3_settings.replace(spark_shuffle_partitions=4, spark_driver_memory="2g"), "g2i-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """Small sample dumps of all three formats (seed 7, 300 nodes each)."""
    from g2i_core.sample.generator import generate_sample

    out = tmp_path_factory.mktemp("sample")
    generate_sample(out, nodes=300, seed=7)
    return out


@pytest.fixture
def torch_one_thread():
    """One torch thread per test: on a shared 2-core machine OpenMP spinning makes 2 threads ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)


@pytest.fixture(scope="session")
def live_images(tmp_path_factory):
    """A loopback image server for the sample dumps the live-scheduler tests upload. It starts before
    ``airflow_live`` because the Airflow processes' environment is fixed at ``up``: they get its host in
    ``G2I_FETCH_ALLOW_HOSTS`` (the fetcher refuses loopback otherwise). It serves whatever is written under
    ``live_images.directory``, so a test renders its sample there later, with ``live_images.base_url``."""
    from g2i_core.sample.server import ImageServer

    directory = tmp_path_factory.mktemp("live-images")
    server = ImageServer(directory, port=0, slow_seconds=0.5).start()
    server.directory = directory
    yield server
    server.stop()


@pytest.fixture(scope="session")
def airflow_live(s3_server, live_images, tmp_path_factory):
    """A real Airflow 3 (`g2i airflow up`: api-server, scheduler, dag-processor, triggerer) on a free port,
    with a private AIRFLOW_HOME and the test S3 server under ``s3://<bucket>/airflow-live``. One instance is
    shared by every live-scheduler test; ``down`` at session end. ``airflow_live.client()`` is the REST API.

    On start the ``@daily`` mmag_refresh is unpaused and gets its scheduled run at once; with no amazon2014
    dump under this root (test_airflow_chain.py uploads goodreads and amazon2018 only) its ``plan`` fails
    fast (one retry after 1 s), which frees ``max_active_runs=1``."""
    from g2i_core.airflow_local import LocalAirflow, free_port

    access, secret = s3_server.credentials()
    home = tmp_path_factory.mktemp("airflow-live")
    env = {
        "G2I_STORAGE_ROOT": f"s3://{s3_server.bucket}/airflow-live", "G2I_S3_ENDPOINT": s3_server.endpoint,
        "G2I_S3_ACCESS_KEY": access, "G2I_S3_SECRET_KEY": secret, "G2I_S3_MAX_ATTEMPTS": "3",
        "G2I_SPARK_DRIVER_MEMORY": "1g", "G2I_SPARK_SHUFFLE_PARTITIONS": "2",
        "G2I_SPARK_LOCAL_DIR": str(home / "spark"), "G2I_RETRIES": "1", "G2I_RETRY_DELAY_S": "1",
        "OMP_NUM_THREADS": "1", "G2I_FETCH_ALLOW_HOSTS": f"127.0.0.1:{live_images.port}",
        "G2I_BACKFILL_SHARDS": "2", "G2I_BACKFILL_SAMPLE": "8",  # the asset-triggered backfill's defaults
    }
    af = LocalAirflow(home, port=free_port(), env_overrides=env)
    af.up(timeout=300)  # stops what it started if it fails
    yield af
    af.down()
