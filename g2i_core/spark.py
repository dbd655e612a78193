"""Spark session factory: local[2] by default, a cluster master from config otherwise.

The same factory configures s3a for the storage endpoint (path-style for SeaweedFS/MinIO), attaches
the project-local jars (hadoop-aws, its AWS SDK bundle, GraphFrames when available, and our GraphX
bridge), and sizes shuffle partitions and memory for a 2-core / 24 GiB machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from g2i_core.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def spark_conf(settings: Settings, app_name: str = "g2i") -> dict[str, str]:
    """Every Spark setting the project uses, as a plain dict (also used to build spark-submit args)."""
    conf: dict[str, str] = {
        "spark.app.name": app_name,
        "spark.master": settings.spark_master,
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.executor.memory": settings.spark_executor_memory,
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.default.parallelism": str(settings.spark_shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.local.dir": settings.spark_local_dir,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.compression.codec": "zstd",
        # Keep Spark's own writes from leaving _SUCCESS/_temporary noise in published prefixes.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.driver.extraJavaOptions": "-Dio.netty.tryReflectionSetAccessible=true",
    }
    jars = settings.jar_paths()
    if jars:
        conf["spark.jars"] = ",".join(jars)
    if settings.spark_packages:
        conf["spark.jars.packages"] = settings.spark_packages
    if settings.storage_root.startswith("s3://") or settings.s3_endpoint:
        conf.update(s3a_conf(settings))
    return conf


def spark_master_is_cluster(master: str) -> bool:
    """True unless Spark runs inside this one process (``local`` / ``local[N]``)."""
    m = master.strip().lower()
    return not (m == "local" or m.startswith("local["))


def s3a_conf(settings: Settings) -> dict[str, str]:
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.path.style.access": str(settings.s3_path_style).lower(),
        "spark.hadoop.fs.s3a.connection.maximum": "64",
        "spark.hadoop.fs.s3a.attempts.maximum": str(settings.s3_max_attempts),
        "spark.hadoop.fs.s3a.fast.upload": "true",
        "spark.hadoop.fs.s3a.endpoint.region": settings.s3_region,
        # Committer that does not rely on rename semantics S3 lacks.
        "spark.hadoop.fs.s3a.committer.name": "directory",
        "spark.hadoop.fs.s3a.committer.staging.conflict-mode": "replace",
    }
    if settings.s3_endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = settings.s3_endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(settings.s3_endpoint.startswith("https")).lower()
    if settings.s3_access_key:
        conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        conf["spark.hadoop.fs.s3a.access.key"] = settings.s3_access_key
        conf["spark.hadoop.fs.s3a.secret.key"] = settings.s3_secret_key
    return conf


def get_spark(settings: Settings | None = None, app_name: str = "g2i") -> "SparkSession":
    """Build (or return the active) SparkSession configured from ``settings``."""
    from pyspark.sql import SparkSession

    settings = settings or Settings.load()
    Path(settings.spark_local_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", _python())
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", _python())
    builder = SparkSession.builder
    for key, value in spark_conf(settings, app_name).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    checkpoint = Path(settings.spark_local_dir) / "checkpoints"
    checkpoint.mkdir(parents=True, exist_ok=True)
    spark.sparkContext.setCheckpointDir(str(checkpoint))
    log.info("spark session master=%s jars=%d", settings.spark_master, len(settings.jar_paths()))
    return spark


def has_jvm_class(spark: "SparkSession", class_name: str) -> bool:
    try:
        spark.sparkContext._jvm.java.lang.Class.forName(
            class_name, True, spark.sparkContext._jvm.Thread.currentThread().getContextClassLoader())
        return True
    except Exception:  # noqa: BLE001 - py4j raises a generic error when the class is absent
        return False


def _python() -> str:
    import sys

    return sys.executable
