"""Portable model settings (roles -> folders), the paper preset, per-preset defaults and Inception FID's
weights setting."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no g2i.toml
    for var in ("G2I_CONFIG", "G2I_MODEL_PATHS", "G2I_SD15_PATH", "G2I_CLIP_VISION_PATH", "G2I_INCEPTION_PATH",
                "G2I_MODEL_PRESET"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.mark.parametrize("text", ['{"base": "/w/sd", "image_encoder": "/w/clip"}', "base=/w/sd, image_encoder=/w/clip"])
def test_model_paths_from_the_environment(clean_env, monkeypatch, text):
    from g2i_core.config import Settings

    monkeypatch.setenv("G2I_MODEL_PATHS", text)
    assert Settings.load().model_part_paths() == {"base": "/w/sd", "image_encoder": "/w/clip"}


def test_model_paths_from_a_toml_table_and_the_older_settings(clean_env):
    from g2i_core.config import Settings

    (clean_env / "g2i.toml").write_text('[g2i]\nsd15_path = "/old/sd"\nclip_vision_path = "/old/clip"\n\n'
                                        '[model_paths]\nbase = "/w/sd"\n')
    # a role the table names wins; the others fall back to sd15_path / clip_vision_path
    assert Settings.load().model_part_paths() == {"base": "/w/sd", "image_encoder": "/old/clip"}


@pytest.mark.parametrize("text", ["base", "base=", "{not json", '{"base": 3}'])
def test_bad_model_paths_explain_themselves(clean_env, monkeypatch, text):
    from g2i_core.config import Settings

    monkeypatch.setenv("G2I_MODEL_PATHS", text)
    with pytest.raises(ValueError, match="G2I_MODEL_PATHS"):
        Settings.load()


def test_a_saved_config_names_roles_and_never_this_machines_folders(tmp_path):
    from g2i_core.model.config import G2IConfig, MissingModelPartError, sd15_config

    for sub in ("unet", "vae", "text_encoder", "tokenizer"):
        (tmp_path / "stable-diffusion-v1-5" / sub).mkdir(parents=True)
    (tmp_path / "clip-vit-large-patch14").mkdir()
    cfg = sd15_config(str(tmp_path / "stable-diffusion-v1-5"), str(tmp_path / "clip-vit-large-patch14"))
    saved = cfg.to_json()
    assert str(tmp_path) not in saved and "part_paths" not in saved
    assert cfg.resolve(cfg.vae_path) == str(tmp_path / "stable-diffusion-v1-5" / "vae")
    elsewhere = G2IConfig.from_dict(json.loads(saved))  # another machine, nothing configured
    needs = r"'base' \(trained with 'stable-diffusion-v1-5'\).*G2I_MODEL_PATHS"
    with pytest.raises(MissingModelPartError, match=needs):
        elsewhere.resolve(elsewhere.text_encoder_path)
    # a role is also found under its folder name; roles the model does not use are dropped
    moved = elsewhere.with_part_paths({"stable-diffusion-v1-5": "/b/sd15", "unrelated": "/x"})
    assert moved.resolve(moved.unet_path) == "/b/sd15/unet" and "unrelated" not in moved.part_paths


def test_paper_preset_is_one_switch(clean_env, tmp_path):
    from g2i_core.config import Settings
    from g2i_core.model.config import PRESET_TRAIN_DEFAULTS, sampling_defaults, sd15_paper_config
    from g2i_core.model.train import TrainConfig, model_config_for

    cfg = sd15_paper_config("", "", random_weights=True)
    assert (cfg.preset, cfg.graph_mode, cfg.max_neighbours, cfg.resolution) == ("sd15-paper", "images_only", 5, 256)
    assert sampling_defaults("sd15-paper") == {"text_scale": 7.5, "graph_scale": 7.5}
    assert sampling_defaults("sd15") == {"text_scale": 7.5, "graph_scale": 1.5}
    assert sampling_defaults("tiny") == {"text_scale": 3.0, "graph_scale": 4.0}
    assert PRESET_TRAIN_DEFAULTS["sd15-paper"]["lr"] == 1e-5
    from g2i_core.model.config import PAPER_RERANK
    from g2i_core.rerank import RerankConfig

    rerank = RerankConfig(**PAPER_RERANK)  # the paper's neighbours: CLIP text->image, PPR weight 0
    rerank.check()
    assert (rerank.neighbour_kind, rerank.ppr_weight, rerank.k) == ("image", 0.0, 5)
    for sub in ("unet", "vae", "text_encoder", "tokenizer"):
        (tmp_path / "sd" / sub).mkdir(parents=True)
    (tmp_path / "clip").mkdir()
    settings = Settings.load(model_paths=f"base={tmp_path / 'sd'},image_encoder={tmp_path / 'clip'}")
    mcfg = model_config_for(TrainConfig(preset="sd15-paper"), settings)
    assert (mcfg.graph_mode, mcfg.preset) == ("images_only", "sd15-paper")
    assert model_config_for(TrainConfig(preset="sd15-paper", graph_mode="none"), settings).graph_mode == "none"


def test_train_cli_takes_the_paper_presets_defaults(clean_env, monkeypatch):
    """`g2i train --preset paper` fills lr, flips and graph mode from the preset; a flag still wins."""
    import argparse

    from g2i_core.commands import train as train_cmd

    seen = {}
    monkeypatch.setattr("g2i_core.model.train.train", lambda cfg, settings: seen.setdefault("cfg", cfg) and None)
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    with pytest.raises(AttributeError):  # the stub returns no result; the config is what matters here
        train_cmd.run(parser.parse_args(["--run-id", "p", "--preset", "paper", "--variant", "fp16", "--dtype", "bf16"]))
    cfg = seen["cfg"]
    assert (cfg.preset, cfg.graph_mode, cfg.lr, cfg.random_flip) == ("sd15-paper", "images_only", 1e-5, True)
    assert (cfg.variant, cfg.torch_dtype) == ("fp16", "bf16")
    seen.clear()
    with pytest.raises(AttributeError):
        train_cmd.run(parser.parse_args(["--run-id", "p", "--preset", "tiny16", "--graph-mode", "none"]))
    assert (seen["cfg"].graph_mode, seen["cfg"].random_flip, seen["cfg"].lr) == ("none", False, 1e-3)


def test_inception_fid_without_weights_names_the_setting(clean_env):
    from g2i_core.config import Settings
    from g2i_core.evaluate.suite import _load_encoders

    with pytest.raises(FileNotFoundError, match="G2I_INCEPTION_PATH"):
        _load_encoders(Settings.load(), ("inception",))
    with pytest.raises(FileNotFoundError, match="G2I_INCEPTION_PATH='/nowhere/inception.pth' is not a file"):
        _load_encoders(Settings.load(inception_path="/nowhere/inception.pth"), ("inception",))
    with pytest.raises(ValueError, match="unknown encoders"):
        _load_encoders(Settings.load(), ("inceptoin",))


@pytest.mark.slow  # a full-size Inception-v3 (24 M parameters) at 299 px on the CPU
def test_inception_fid_through_torchmetrics_on_local_weights(tmp_path):
    """A randomly initialised FID Inception-v3 saved as .safetensors (the real weights are a download):
    torchmetrics computes FID from it; equal sets score ~0, different ones more."""
    pytest.importorskip("torch_fidelity", reason="Inception FID needs the paper extra (torch-fidelity)")
    from unittest import mock

    import torch
    from safetensors.torch import save_file
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from g2i_core.evaluate.inception import InceptionFID

    torch.manual_seed(0)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None), \
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", return_value={}):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])  # random init, nothing fetched
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    rng = np.random.default_rng(0)
    real = (rng.random((4, 48, 48, 3)) * 255).astype(np.uint8)
    other = np.clip(real.astype(int) // 3 + 150, 0, 255).astype(np.uint8)
    fid = InceptionFID(str(path), batch_size=2)
    score = fid.metrics(other, real)["inception_fid"]
    assert score.n == 4 and score.mean > 0 and score.lo <= score.mean <= score.hi
