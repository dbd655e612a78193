"""Storage on both backends (local disk and the real SeaweedFS server), including a publish that a
killed process leaves half-done."""

import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from g2i_core.storage import NotPublishedError, Storage, with_retries

pytestmark = pytest.mark.s3


@pytest.fixture(params=["file", "s3"])
def storage(request, file_storage) -> Storage:
    return file_storage if request.param == "file" else request.getfixturevalue("s3_storage")


def test_objects_roundtrip_list_delete(storage):
    storage.put_bytes(storage.uri("a/b/one.txt"), b"1")
    storage.put_bytes(storage.uri("a/two.txt"), b"22")
    storage.put_json(storage.uri("a/c.json"), {"x": [1, 2]})
    assert storage.get_bytes(storage.uri("a/b/one.txt")) == b"1"
    assert storage.get_json(storage.uri("a/c.json")) == {"x": [1, 2]}
    assert storage.exists(storage.uri("a/two.txt")) and not storage.exists(storage.uri("a/nope"))
    assert storage.list(storage.uri("a")) == sorted(storage.uri(k) for k in ("a/b/one.txt", "a/two.txt", "a/c.json"))
    with pytest.raises(FileNotFoundError):
        storage.get_bytes(storage.uri("a/nope"))
    assert storage.delete_prefix(storage.uri("a/b")) == 1
    assert storage.list(storage.uri("a/b")) == []


def test_list_dirs_names_one_level_of_folders(storage):
    for key in ("t/run=a/attempt=1/part-0.parquet", "t/run=b/x", "t/_manifests/a.json", "t/_LATEST", "u/v/w/z"):
        storage.put_bytes(storage.uri(key), b"1")
    assert storage.list_dirs(storage.root) == ["t", "u"]
    assert storage.list_dirs(storage.uri("t")) == ["_manifests", "run=a", "run=b"]
    assert storage.list_dirs(storage.uri("nope")) == []


def test_gc_removes_old_runs_and_keeps_the_newest(storage):
    from g2i_core.retention import RetentionPolicy, apply_gc, plan_gc

    for night in (1, 2, 3):
        storage.publish_table("nodes", pa.table({"night": [night]}), f"r{night}", logical_date=f"2026-11-0{night}")
    storage.put_bytes(storage.uri("images", "ab", "abc.png"), b"png")  # content-addressed: never a table
    plan = plan_gc(storage, RetentionPolicy(keep_runs=1, grace_s=0))
    assert list(plan.kept) == ["nodes"] and [r.run_id for r in plan.removals] == ["r2", "r1"]
    assert apply_gc(storage, plan) == 4
    assert [r for r in ("r1", "r2", "r3") if storage.list(storage.uri("nodes", f"run={r}"))] == ["r3"]
    assert storage.read_table("nodes").column("night").to_pylist() == [3]
    # SeaweedFS still lists the emptied run= folders; a second gc has nothing to do either way
    assert plan_gc(storage, RetentionPolicy(keep_runs=1, grace_s=0)).removals == []
    with pytest.raises(NotPublishedError):
        storage.read_table("nodes", "r1")
    assert storage.exists(storage.uri("images", "ab", "abc.png"))


def test_content_addressed_put_dedupes(storage):
    first = storage.put_content_addressed(b"pixels", prefix="images", ext="png")
    again = storage.put_content_addressed(b"pixels", prefix="images", ext="png")
    other = storage.put_content_addressed(b"other", prefix="images", ext="png")
    assert first.created and not again.created and first.key == again.key
    assert first.key == f"images/{first.sha256[:2]}/{first.sha256}.png"
    assert other.key != first.key
    assert storage.get_bytes(storage.uri(first.key)) == b"pixels"


def test_content_addressed_put_is_one_conditional_request_on_s3(s3_storage):
    """A dedupe hit costs one PUT answered 412 by the real server (If-None-Match), not a HEAD and a PUT."""
    sent = []
    s3_storage.s3.meta.events.register("before-send.s3", lambda request, **_: sent.append(
        (request.method, request.headers.get("If-None-Match"))))
    first = s3_storage.put_content_addressed(b"cover", prefix="images", ext="png")
    again = s3_storage.put_content_addressed(b"cover", prefix="images", ext="png")
    assert first.created and not again.created
    assert sent == [("PUT", b"*"), ("PUT", b"*")]
    assert s3_storage.get_bytes(s3_storage.uri(first.key)) == b"cover"


def test_content_addressed_put_falls_back_where_conditional_put_is_not_implemented(s3_storage):
    """A server answering 501 to If-None-Match (SeaweedFS implements it, so a botocore hook plays that
    server) gets a HEAD and a PUT from then on, and dedupe still holds."""
    from botocore.awsrequest import AWSResponse

    class _Raw:
        def __init__(self, body: bytes):
            self.body = body

        def stream(self, **_):
            yield self.body

    sent = []

    def no_conditional_put(request, **_):
        sent.append((request.method, request.headers.get("If-None-Match")))
        if request.headers.get("If-None-Match"):
            body = b"<Error><Code>NotImplemented</Code><Message>conditional PUT</Message></Error>"
            return AWSResponse(request.url, 501, {"Content-Type": "application/xml"}, _Raw(body))
        return None

    s3_storage.s3.meta.events.register("before-send.s3", no_conditional_put)
    first = s3_storage.put_content_addressed(b"cover-501", prefix="images", ext="png")
    again = s3_storage.put_content_addressed(b"cover-501", prefix="images", ext="png")
    assert first.created and not again.created
    assert sent == [("PUT", b"*"), ("HEAD", None), ("PUT", None), ("HEAD", None)]
    assert s3_storage.get_bytes(s3_storage.uri(first.key)) == b"cover-501"


def test_storage_pickles_without_its_client(s3_storage):
    import pickle

    s3_storage.put_bytes(s3_storage.uri("pickled.txt"), b"x")  # the client exists now
    copy = pickle.loads(pickle.dumps(s3_storage))
    assert copy._client is None and copy.root == s3_storage.root
    assert copy.get_bytes(copy.uri("pickled.txt")) == b"x"  # it makes its own


def test_publish_replaces_and_versions(storage):
    with pytest.raises(NotPublishedError):
        storage.read_table("t")
    v1 = pa.table({"id": ["a", "b"], "x": [1, 2]})
    m = storage.publish_table("t", v1, "2026-01-01", extra={"lines_in": 2})
    assert m["rows"] == 2 and m["extra"] == {"lines_in": 2}
    # a rerun of the same run id replaces rather than appends
    storage.publish_table("t", v1, "2026-01-01")
    assert storage.read_table("t").num_rows == 2
    v2 = pa.table({"id": ["c"], "x": [3]})
    storage.publish_table("t", v2, "2026-01-02", max_rows_per_file=1)
    assert storage.read_table("t").to_pydict() == {"id": ["c"], "x": [3]}
    assert storage.read_table("t", run_id="2026-01-01").num_rows == 2  # older runs stay readable
    big = pa.table({"id": [str(i) for i in range(5)], "x": list(range(5))})
    m = storage.publish_table("t", big, "2026-01-03", max_rows_per_file=2)
    assert m["file_rows"] == [2, 2, 1] and storage.read_table("t").num_rows == 5


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import pyarrow as pa
    from g2i_core.config import Settings
    from g2i_core.storage import Storage
    root, phase = sys.argv[1], sys.argv[2]
    s = Storage(root, settings=Settings.load())
    # Fault injection for timing only: park the writer at the chosen point so the test can SIGKILL it there.
    if phase == "before_manifest":
        orig = Storage.commit
        def parked(self, *a, **k):
            print("PARKED", flush=True); time.sleep(60); return orig(self, *a, **k)
        Storage.commit = parked
    else:
        orig = Storage.write_parquet
        calls, written = [], []
        def parked(self, uri, table, **options):
            calls.append(uri)
            if len(calls) == 2:
                while not written:  # files are written in parallel: park once the first one is stored
                    time.sleep(0.01)
                print("PARKED", flush=True); time.sleep(60)
            orig(self, uri, table, **options)
            written.append(uri)
        Storage.write_parquet = parked
    s.publish_table("t", pa.table({"id": [str(i) for i in range(10)]}), "run2", max_rows_per_file=2)
""")


@pytest.mark.parametrize("phase", ["mid_data", "before_manifest"])
def test_killed_publish_leaves_previous_version_visible(storage, phase, s3_settings, tmp_path):
    storage.publish_table("t", pa.table({"id": ["old"]}), "run1")
    script = tmp_path / "writer.py"
    script.write_text(_KILLED_WRITER)
    env = dict(os.environ, G2I_S3_ENDPOINT=s3_settings.s3_endpoint, G2I_S3_ACCESS_KEY=s3_settings.s3_access_key,
               G2I_S3_SECRET_KEY=s3_settings.s3_secret_key)
    proc = subprocess.Popen([sys.executable, str(script), storage.root, phase], stdout=subprocess.PIPE, env=env,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "PARKED"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert any("run=run2" in u for u in storage.list(storage.uri("t")))  # it did write data ...
    assert storage.read_table("t").to_pydict() == {"id": ["old"]}  # ... but readers never see it
    assert not storage.is_published("t", "run2")
    # and a rerun of the killed run completes cleanly, replacing the debris (no grace for writers at work here)
    storage.attempt_grace_s = 0
    storage.publish_table("t", pa.table({"id": ["new"]}), "run2")
    assert storage.read_table("t").to_pydict() == {"id": ["new"]}
    assert len([u for u in storage.list(storage.uri("t")) if "run=run2" in u]) == 1  # the killed attempt is gone


def test_transient_errors_are_retried_then_surface(s3_storage):
    """A server that returns 503 twice cannot be produced on demand, so a thin fault wrapper injects it."""
    from botocore.exceptions import ClientError

    real = s3_storage.s3
    failures = {"n": 0}

    class FlakyClient:
        def __getattr__(self, name):
            return getattr(real, name)

        def put_object(self, **kw):
            if failures["n"] < 2:
                failures["n"] += 1
                raise ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
                                  "PutObject")
            return real.put_object(**kw)

    flaky = Storage(s3_storage.root, s3_client=FlakyClient())
    flaky.put_bytes(flaky.uri("retry.txt"), b"ok")
    assert failures["n"] == 2 and s3_storage.get_bytes(s3_storage.uri("retry.txt")) == b"ok"

    calls = {"n": 0}

    def denied():
        calls["n"] += 1
        raise ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Get")

    with pytest.raises(ClientError):
        with_retries(denied, attempts=5, base_delay=0.001)
    assert calls["n"] == 1  # permanent errors are not retried


def test_wrong_credentials_are_rejected(s3_server):
    import boto3
    from botocore.exceptions import ClientError

    bad = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                       aws_access_key_id="nobody", aws_secret_access_key="wrong")
    with pytest.raises(ClientError):
        bad.list_objects_v2(Bucket=s3_server.bucket)


def test_bad_root_is_explained():
    with pytest.raises(ValueError, match="s3://bucket"):
        Storage("hdfs://nn/x")


def test_footer_reads_fetch_only_byte_ranges(s3_storage):
    """publish_written reads Parquet footers by ranged GETs: the bytes fetched are far fewer than the file."""
    import hashlib

    import pyarrow.parquet as pq

    big = pa.table({"id": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(50_000)]})
    uri = s3_storage.uri("footer", "loose", "part-00000.parquet")
    s3_storage.write_parquet(uri, big)
    src = s3_storage.ranged_source(uri)
    fetched = {"bytes": 0}
    orig = src.readinto

    def counting(buf):
        n = orig(buf)
        fetched["bytes"] += n
        return n

    src.readinto = counting
    assert pq.read_metadata(src).num_rows == 50_000
    assert 0 < fetched["bytes"] < len(s3_storage.get_bytes(uri)) / 10
    attempt = s3_storage.begin("footer", "r")
    s3_storage.write_parquet(f"{attempt.uri}/part-00000.parquet", big)
    assert s3_storage.publish_written(attempt, rows=50_000)["rows"] == 50_000
