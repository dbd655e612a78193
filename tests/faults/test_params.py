"""Free-form params are validated at the edge (issue 13, item 5).

A DAG-trigger user controls ``run_id``, ``model`` and ``raw``. Before this change a run id of
``../../escape`` left a ``file://`` root, ``a#b`` aliased run ``a`` on S3 (the fragment is dropped), and
``raw`` made the worker read any URI with the pipeline's credentials. Each layer is checked on its own:
the one run-id validator (``g2i_core.ids``), every CLI flag that names a run, ``Storage.uri``, the DAG
``Param`` schemas (as Airflow validates a trigger's conf), and the raw-URI policy of the DAG path.
"""

from __future__ import annotations

import copy
import gzip
import os
from pathlib import Path

import pytest

from g2i_core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"

BAD_IDS = ["../../escape", "a#b", "a/b", ".hidden", "a?b", "a..b", "-lead", "a b", "a\\b", "a\x00b",
           "abc\n", "x" * 200]
GOOD_IDS = ["train-20240101", "backfill-20240101-check", "goodreads-20240101", "a.b_c-1", "A", "x" * 128]


# ---- the validator --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", BAD_IDS + [""])
def test_check_run_id_rejects_hostile_ids(bad):
    from g2i_core.ids import check_run_id

    with pytest.raises(ValueError, match="run_id"):
        check_run_id(bad)


@pytest.mark.parametrize("good", GOOD_IDS)
def test_check_run_id_accepts_ordinary_ids(good):
    from g2i_core.ids import check_run_id

    assert check_run_id(good) == good


# ---- every CLI flag that names a run ----------------------------------------------------------------------
# (argv before the flag, the flag, does the flag accept "" as "use the default")
CLI_FLAGS = [
    (["ingest", "--source", "goodreads", "--raw", "file:///tmp/x.json.gz"], "--run-id", True),
    (["fetch-images"], "--run-id", True),
    (["build-graph"], "--run-id", True),
    (["build-graph"], "--graph-run-id", True),
    (["ppr", "--edges", "file:///tmp/e"], "--run-id", True),
    (["embed"], "--run-id", True),
    (["rerank"], "--run-id", True),
    (["export"], "--run-id", True),
    (["train"], "--run-id", False),
    (["generate", "--model", "file:///tmp/m", "--split", "test"], "--run-id", False),
    (["evaluate"], "--run-id", False),
]


def _parse(argv: list[str]):
    from g2i_core.cli import build_parser

    return build_parser(argv[0]).parse_args(argv)


def _required_tail(argv: list[str], flag: str) -> list[str]:
    # The required --run-id of evaluate/train still has to be there when we test another flag.
    return [] if flag == "--run-id" or argv[0] not in {"train", "evaluate"} else ["--run-id", "ok"]


@pytest.mark.parametrize("argv,flag,empty_ok", CLI_FLAGS, ids=[f"{a[0]} {f}" for a, f, _ in CLI_FLAGS])
def test_cli_rejects_hostile_run_ids(argv, flag, empty_ok, capsys):
    for bad in BAD_IDS + ([] if empty_ok else [""]):
        with pytest.raises(SystemExit) as exc:
            _parse([*argv, *_required_tail(argv, flag), f"{flag}={bad}"])
        assert exc.value.code == 2, (flag, bad)
        assert "run_id" in capsys.readouterr().err, (flag, bad)
    for good in GOOD_IDS + ([""] if empty_ok else []):
        args = _parse([*argv, *_required_tail(argv, flag), f"{flag}={good}"])
        assert getattr(args, flag[2:].replace("-", "_")) == good


def test_cli_rejects_hostile_generation_run_and_model(capsys):
    for bad in BAD_IDS:
        with pytest.raises(SystemExit):
            _parse(["evaluate", "--run-id", "ok", "--generations", f"g2i={bad}"])
        assert "run_id" in capsys.readouterr().err, bad
    assert _parse(["evaluate", "--run-id", "ok", "--generations", "g2i=eval-20240101"]).generations == \
        [("g2i", "eval-20240101")]
    # --model is a folder (URI or path), so '/' is fine, but no traversal, fragment or query.
    for bad in ["s3://g2i/models/../../other", "file:///tmp/m#frag", "s3://g2i/models/x?versionId=1", "../m",
                "m\x00"]:
        with pytest.raises(SystemExit):
            _parse(["generate", f"--model={bad}", "--run-id", "ok", "--split", "test"])
        assert "--model" in capsys.readouterr().err, bad
    for good in ["s3://g2i/mmag/goodreads/models/train-20240101", "/models/tiny", "file:///tmp/m"]:
        assert _parse(["generate", "--model", good, "--run-id", "ok", "--split", "test"]).model == good


def test_cli_run_by_a_human_may_still_read_any_raw_uri():
    """Documented decision: the raw-URI policy guards the DAG path (a trigger user's params); an operator
    with a shell already holds the credentials, so ``g2i ingest --raw`` is not restricted."""
    args = _parse(["ingest", "--source", "goodreads", "--raw", "s3://elsewhere/dump.json.gz"])
    assert args.raw == "s3://elsewhere/dump.json.gz"


# ---- Storage.uri ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../../escape", "..", "a/../../b", "a#b", "a?b", "a\\b", "a\x00b"])
def test_storage_uri_refuses_parts_that_leave_the_root_or_alias(tmp_path, bad):
    from g2i_core.storage import Storage

    root = tmp_path / "store"
    storage = Storage(f"file://{root}")
    with pytest.raises(ValueError):
        storage.uri("models", bad)
    with pytest.raises(ValueError):
        Storage("s3://bucket/prefix").uri("reports", bad, "report.html")
    assert not (tmp_path.parent / "escape").exists()


def test_storage_uri_keeps_ordinary_parts(tmp_path):
    from g2i_core.storage import Storage

    s = Storage(f"file://{tmp_path}/store")
    assert s.uri("reports", "eval-20240101", "report.html") == f"file://{tmp_path}/store/reports/eval-20240101/report.html"
    assert s.uri("images/ab/ab12.png") == f"file://{tmp_path}/store/images/ab/ab12.png"
    assert s.uri("nodes", "run=goodreads-20240101") == f"file://{tmp_path}/store/nodes/run=goodreads-20240101"


@pytest.mark.parametrize("bad", ["../../escape", "a#b", "a?b", ".hidden", "x" * 200])
def test_storage_refuses_to_publish_a_hostile_run_id(tmp_path, bad):
    import pyarrow as pa

    from g2i_core.storage import Storage

    storage = Storage(f"file://{tmp_path}/store")
    with pytest.raises(ValueError, match="run_id"):
        storage.publish_table("nodes", pa.table({"x": [1]}), bad)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


# ---- the DAG Params, as Airflow validates a trigger's conf ------------------------------------------------
@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                           "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__CORE__UNIT_TEST_MODE": "False"}.items():
            mp.setenv(key, value)
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(str(DAGS))
        assert bag.import_errors == {}
        yield bag


RUN_PARAMS = [("g2i_train", "run_id"), ("g2i_evaluate", "model"), ("g2i_backfill_covers", "model")]


@pytest.mark.airflow
@pytest.mark.parametrize("dag_id,param", RUN_PARAMS)
def test_dag_params_reject_hostile_run_ids(dagbag, dag_id, param):
    from airflow.sdk.definitions.param import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags[dag_id]
    # What create_dagrun does with a trigger's conf: merge it into the serialized DAG's params, validate.
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    for bad in BAD_IDS:
        with pytest.raises(ParamValidationError):
            serialized.params.deep_merge({param: bad}).validate()
        params = copy.deepcopy(dag.params)  # the task-side ParamsDict
        with pytest.raises(ParamValidationError):
            params[param] = bad
    for good in GOOD_IDS + [""]:  # "" = the default (derived run id / the latest model)
        assert serialized.params.deep_merge({param: good}).validate()[param] == good


@pytest.mark.airflow
def test_mmag_refresh_raw_param_takes_only_known_sources_and_strings(dagbag):
    from airflow.sdk.definitions.param import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags["mmag_refresh"]))
    for bad in [{"goodreads": 5}, {"elsewhere": "s3://g2i/raw/x"}, {"goodreads": "s3://g2i/raw/../x"}]:
        with pytest.raises(ParamValidationError):
            serialized.params.deep_merge({"raw": bad}).validate()
    ok = {"goodreads": "s3://g2i/raw/sample/goodreads_books.json.gz"}
    assert serialized.params.deep_merge({"raw": ok}).validate()["raw"] == ok


# ---- raw URIs: the dataset's raw/ prefix or the allow-list ---------------------------------------------------
ROOT_URI = "s3://g2i/prod"
RAW_OUTSIDE = [
    "s3://g2i/prod/raw/../../other/dump.json.gz",  # traversal out of raw/
    "s3://g2i/prod/raw/sample/../../mmag/goodreads/nodes/x",
    "s3://g2i/prod/raw/%2e%2e/%2e%2e/other",  # encoded traversal
    "s3://g2i/prod/other/dump.json.gz",
    "s3://g2i/prod/raw-evil/dump.json.gz",  # a sibling that merely starts with "raw"
    "s3://g2i/prod/raw",  # the prefix itself is not a dump under it
    "s3://other-bucket/prod/raw/dump.json.gz",
    "S3://g2i/prod/raw/dump.json.gz", "s3a://g2i/prod/raw/dump.json.gz",  # scheme tricks
    "s3://g2i/prod/raw/dump.json.gz?versionId=1", "s3://g2i/prod/raw/dump.json.gz#x",
    "s3://g2i/prod/raw/dump\\..\\..\\x", "s3://g2i/prod/raw/dump\x00",
    "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/", "/etc/passwd",
]


def _settings(root: str = ROOT_URI, **kw) -> Settings:
    return Settings.load(storage_root=root, s3_access_key="test-access-key", s3_secret_key="test-secret-key", **kw)


@pytest.mark.parametrize("uri", RAW_OUTSIDE)
def test_raw_uris_outside_the_raw_prefix_are_refused(uri):
    from g2i_core.ids import check_raw_uri

    with pytest.raises(ValueError, match="raw"):
        check_raw_uri(uri, _settings())


def test_raw_uris_inside_the_raw_prefix_or_the_allow_list_pass():
    from g2i_core.ids import check_raw_uri

    s = _settings()
    for uri in ["s3://g2i/prod/raw/sample/goodreads_books.json.gz", "s3://g2i/prod/raw/delta/goodreads/20240101",
                "s3://g2i/prod/raw/goodreads/2024/part-0.json.gz"]:
        assert check_raw_uri(uri, s) == uri
    listed = _settings(raw_allow_prefixes="s3://dumps/goodreads/, file:///data/dumps")
    assert check_raw_uri("s3://dumps/goodreads/2024/books.json.gz", listed)
    assert check_raw_uri("file:///data/dumps/books.json.gz", listed)
    for bad in ["s3://dumps/goodreads-evil/x", "s3://dumps/goodreads/../secret/x", "file:///data/dumps/../../etc/x",
                "file:///data/dumpsX/x"]:
        with pytest.raises(ValueError, match="raw"):
            check_raw_uri(bad, listed)


def test_raw_allow_prefixes_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("G2I_RAW_ALLOW_PREFIXES", "s3://dumps/a/,s3://dumps/b/")
    assert Settings.load(s3_access_key="k", s3_secret_key="s").raw_allow_prefixes == "s3://dumps/a/,s3://dumps/b/"


def _dump(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b'{"book_id": "1", "title": "t"}\n'))
    return path


def test_dag_plan_refuses_a_raw_param_outside_raw_before_reading_it(tmp_path):
    """``plan`` is the first task of mmag_refresh: a hostile ``raw`` fails it, nothing is read or planned."""
    from g2i_core.orchestration import plan_refresh

    root = tmp_path / "store"
    secret = _dump(tmp_path / "secret" / "dump.json.gz")  # a real, readable file outside the root
    inside = _dump(root / "raw" / "sample" / "goodreads_books.json.gz")
    settings = _settings(f"file://{root}")
    for raw in [f"file://{secret}", f"file://{root}/raw/../../secret/dump.json.gz"]:
        with pytest.raises(ValueError, match="raw"):
            plan_refresh(settings, ds="2024-01-01", sources=["goodreads"], raw={"goodreads": raw})
    items = plan_refresh(settings, ds="2024-01-01", sources=["goodreads"], raw={"goodreads": f"file://{inside}"})
    assert [(i["source"], i["raw"], i["mode"]) for i in items] == [("goodreads", f"file://{inside}", "full")]


def test_ingest_stage_of_the_dag_refuses_raw_outside_raw_before_starting_a_job(tmp_path):
    """Belt and braces for values that reach the ingest stage some other way than ``plan``."""
    from g2i_core.orchestration import run_stage

    started = []
    settings = _settings(f"file://{tmp_path}/store")
    values = {"source": "goodreads", "raw": "file:///etc/passwd", "graph_root": f"file://{tmp_path}/store/mmag/goodreads",
              "mode": "full", "ds": "2024-01-01", "run_id": "goodreads-20240101"}
    with pytest.raises(ValueError, match="raw"):
        run_stage("ingest", values, settings, on_line=lambda s: None, on_start=started.append)
    assert started == []
    assert os.path.exists("/etc/passwd")  # (the file is there: it was the policy that refused it)
