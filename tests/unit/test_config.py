import pytest

from g2i_core.config import Settings


def test_env_overrides_toml_and_defaults(tmp_path, monkeypatch):
    toml = tmp_path / "g2i.toml"
    toml.write_text('[g2i]\nspark_master = "spark://cluster:7077"\nspark_shuffle_partitions = 64\n')
    monkeypatch.setenv("G2I_SPARK_SHUFFLE_PARTITIONS", "16")
    monkeypatch.setenv("G2I_S3_PATH_STYLE", "false")
    s = Settings.load(toml)
    assert s.spark_master == "spark://cluster:7077"  # from the file
    assert s.spark_shuffle_partitions == 16  # env beats file
    assert s.s3_path_style is False
    assert Settings.load(toml, spark_master="local[1]").spark_master == "local[1]"  # explicit beats env


def test_secrets_never_from_file_and_masked(tmp_path, monkeypatch):
    toml = tmp_path / "g2i.toml"
    toml.write_text('s3_secret_key = "leak"\n')
    with pytest.raises(ValueError, match="must come from the environment"):
        Settings.load(toml)
    monkeypatch.setenv("G2I_S3_SECRET_KEY", "topsecret")
    s = Settings.load()
    assert s.s3_secret_key == "topsecret"
    assert "topsecret" not in repr(s)
    assert s.redacted()["s3_secret_key"] == "***"


@pytest.mark.parametrize("name,value,match", [
    ("G2I_SPARK_SHUFFLE_PARTITIONS", "many", "must be an integer"),
    ("G2I_S3_PATH_STYLE", "maybe", "must be a boolean"),
    ("G2I_STORAGE_ROOT", "hdfs://x", "must start with s3:// or file://"),
    ("G2I_MODEL_PRESET", "huge", "must be 'tiny', 'tiny16', 'sd15' or 'sd15-paper'"),
])
def test_bad_values_explain_themselves(monkeypatch, name, value, match):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        Settings.load()


def test_unknown_setting_lists_valid_names():
    with pytest.raises(ValueError, match="unknown settings.*valid names"):
        Settings.load(no_such_thing=1)
