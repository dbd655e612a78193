"""The sd15 path on the on-disk layouts a user brings, without real weights.

Tiny random checkpoints are written by diffusers' and transformers' own ``save_pretrained`` in the
layouts of the real downloads: an SD-1.5 pipeline folder (model_index.json, unet/, vae/, text_encoder/
(CLIPTextModel), tokenizer/ (a CLIP BPE tokenizer built offline from a tiny vocab), scheduler/), a full
CLIP folder (CLIPModel, like clip-vit-large-patch14: the sd15 preset loads its vision tower) and a DINOv2
folder (the evaluation's encoder). ``g2i train --preset sd15`` trains 2 steps on CPU on 2:3 covers, the
model is saved, the folders move (a "different machine": other paths, given through G2I_MODEL_PATHS),
and ``g2i generate`` loads it and samples. Nothing here needs real weights, so nothing is marked
``real_weights``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch  # noqa: F401 - setup always installs it; a missing torch must fail, not skip

pytestmark = pytest.mark.usefixtures("torch_one_thread")

HIDDEN = 32  # text hidden size = UNet cross-attention dim


def byte_symbols() -> list[str]:
    """The 256 symbols byte-level BPE writes bytes as: printable Latin-1 bytes as themselves, the others
    shifted past 255 in byte order (the mapping CLIP's vocabulary is written in)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, shifted = [], 0
    for b in range(256):
        out.append(chr(b) if b in printable else chr(256 + shifted))
        shifted += b not in printable
    return out


MERGES = ["c o", "co v", "cov e", "cove r</w>", "b o", "bo o", "boo k</w>"]


def clip_vocab() -> dict[str, int]:
    """Every byte symbol alone and word-final, the merged tokens, then the two specials (as in CLIP)."""
    vocab: dict[str, int] = {}
    for tok in [*byte_symbols(), *(s + "</w>" for s in byte_symbols()), *(m.replace(" ", "") for m in MERGES),
                "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(tok, len(vocab))
    return vocab


def write_sd_tokenizer_files(folder: Path, vocab: dict[str, int]) -> None:
    """SD-1.5's tokenizer/ holds vocab.json + merges.txt (no tokenizer.json): write that layout."""
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")


def build_sd15_folder(root: Path, *, fp16_unet_only: bool = False) -> Path:
    """A StableDiffusionPipeline folder with tiny random parts, saved by diffusers."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab = clip_vocab()
    vocab_size = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in MERGES])
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                                projection_dim=HIDDEN, hidden_act="quick_gelu",
                                                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                                pad_token_id=vocab_size - 1))
    # 4 VAE levels: the SD VAE's 8x downsampling, which the sd15 preset assumes
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=32)
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=HIDDEN,
                                attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root, safe_serialization=True)
    write_sd_tokenizer_files(root / "tokenizer", vocab)
    if fp16_unet_only:  # an fp16-only UNet folder (diffusion_pytorch_model.fp16.safetensors and nothing else)
        shutil.rmtree(root / "unet")
        unet.to(torch.float16).save_pretrained(root / "unet", variant="fp16")
    return root


def build_clip_folder(root: Path) -> Path:
    """A full CLIPModel folder (text and vision towers), as clip-vit-large-patch14 comes."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    config = CLIPConfig(text_config=dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=600, max_position_embeddings=77),
                        vision_config=dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=224, patch_size=56),
                        projection_dim=24)
    CLIPModel(config).save_pretrained(root)
    return root


def build_dinov2_folder(root: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(2)
    Dinov2Model(Dinov2Config(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=56, patch_size=14)).save_pretrained(root)
    return root


def publish_cover_tables(storage, n: int = 6) -> list[str]:
    """nodes / node_images / neighbours for ``n`` books with 2:3 covers (each node's neighbours: the others)."""
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    rng = np.random.default_rng(0)
    nodes, images, neighbours = [], [], []
    for i in range(n):
        arr = (rng.random((36, 24, 3)) * 255).astype(np.uint8)  # 24 wide x 36 high: a 2:3 cover
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        ref = storage.put_content_addressed(buf.getvalue(), prefix="images", ext="png", content_type="image/png")
        nid = f"goodreads:{i}"
        nodes.append({"node_id": nid, "text": f"book cover {i}", "split": "train" if i < n - 2 else "test"})
        images.append({"node_id": nid, "image_key": ref.key, "status": "ok"})
    ids = [r["node_id"] for r in nodes]
    for nid in ids:
        for rank, other in enumerate(o for o in ids if o != nid):
            neighbours.append({"node_id": nid, "rank": rank, "neighbour_id": other, "ppr_score": 1.0,
                               "semantic_score": 1.0, "score": 1.0})
    for name, rows in (("nodes", nodes), ("node_images", images), ("neighbours", neighbours)):
        storage.publish_table(name, pa.Table.from_pylist(rows), "covers")
    return ids


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("g2i-weights")
    return {"base": build_sd15_folder(root / "stable-diffusion-v1-5", fp16_unet_only=True),
            "image_encoder": build_clip_folder(root / "clip-vit-large-patch14"),
            "dinov2": build_dinov2_folder(root / "dinov2-large")}


def test_sd15_folder_has_the_download_layout(weights):
    base = weights["base"]
    index = json.loads((base / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (base / sub).is_dir() and index[sub][1], sub
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (base / "tokenizer").iterdir()}
    assert sorted(p.name for p in (base / "unet").iterdir()) == ["config.json",
                                                                 "diffusion_pytorch_model.fp16.safetensors"]
    assert json.loads((weights["image_encoder"] / "config.json").read_text())["model_type"] == "clip"


def test_train_sd15_then_generate_on_another_machine(weights, file_storage, tmp_path, monkeypatch, capsys):
    """Train on machine A (fp16-only UNet, --variant fp16), then move every folder and generate on B."""
    from g2i_core.cli import main

    ids = publish_cover_tables(file_storage)
    monkeypatch.chdir(tmp_path)  # no g2i.toml around
    monkeypatch.setenv("G2I_STORAGE_ROOT", file_storage.root)
    monkeypatch.delenv("G2I_SD15_PATH", raising=False)
    monkeypatch.delenv("G2I_CLIP_VISION_PATH", raising=False)
    monkeypatch.setenv("G2I_MODEL_PATHS", f"base={weights['base']},image_encoder={weights['image_encoder']}")
    rc = main(["train", "--run-id", "sd15-a", "--preset", "sd15", "--nodes-table", "nodes", "--steps", "2",
               "--batch-size", "2", "--resolution", "64", "--max-neighbours", "2", "--checkpoint-every", "100",
               "--log-every", "1", "--variant", "fp16"])
    assert rc == 0, capsys.readouterr().err
    model_uri = file_storage.uri("models", "sd15-a")
    saved = file_storage.get_bytes(f"{model_uri}/config.json").decode()
    config = json.loads(saved)
    # portable: roles and folder names, no path of machine A
    assert str(weights["base"].parent) not in saved
    assert config["frozen_parts"] == {"base": "stable-diffusion-v1-5", "image_encoder": "clip-vit-large-patch14"}
    assert config["text_encoder_path"] == "role://base/text_encoder" and "part_paths" not in config
    assert config["preset"] == "sd15" and config["resolution"] == 64
    train_config = file_storage.get_json(f"{model_uri}/train_config.json")
    assert train_config["lr"] == 1e-5 and train_config["random_flip"] is True  # the sd15 preset's defaults

    # Machine B: copies of the weights in other folders, A's folders gone (renamed away while B works),
    # B's SD folder without any UNet (the trained one is in the model), roles given as JSON.
    b = tmp_path / "machine-b"
    copies = {role: Path(shutil.copytree(path, b / role / path.name)) for role, path in weights.items()}
    shutil.rmtree(copies["base"] / "unet")
    hidden = {role: path.rename(path.with_name(path.name + "-away")) for role, path in weights.items()}
    try:
        monkeypatch.setenv("G2I_MODEL_PATHS", json.dumps({"base": str(copies["base"]),
                                                          "image_encoder": str(copies["image_encoder"])}))
        capsys.readouterr()
        assert main(["generate", "--model", model_uri, "--run-id", "gen-b", "--ids", ",".join(ids[-2:]),
                     "--steps", "2", "--batch-size", "2", "--device", "cpu"]) == 0, capsys.readouterr().err
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["rows"] == 2 and summary["generated"] == 2
        from g2i_core.generate import read_manifest

        rows = read_manifest(file_storage, "gen-b").to_pylist()
        assert {(r["text_scale"], r["graph_scale"]) for r in rows} == {(7.5, 1.5)}  # the sd15 preset's guidance

        # The evaluation's encoders load from B's CLIP and DINOv2 folders.
        import numpy as np

        from g2i_core.evaluate.encoders import load_encoder

        images = np.zeros((2, 32, 32, 3), np.uint8)
        assert load_encoder("clip", str(copies["image_encoder"])).encode(images).shape == (2, 24)
        assert load_encoder("dinov2", str(copies["dinov2"])).encode(images).shape == (2, HIDDEN)
    finally:
        for role, path in hidden.items():
            path.rename(weights[role])


def test_a_missing_role_names_the_setting(weights, tmp_path, monkeypatch):
    from g2i_core.config import Settings
    from g2i_core.model.config import MissingModelPartError, sd15_config
    from g2i_core.model.modeling import G2IModel, build_model

    cfg = sd15_config(str(weights["base"]), str(weights["image_encoder"]), resolution=64, max_neighbours=2)
    model = build_model(cfg, variant="fp16")
    model.save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    for var in ("G2I_SD15_PATH", "G2I_CLIP_VISION_PATH", "G2I_MODEL_PATHS", "G2I_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings.load(model_paths=f"image_encoder={weights['image_encoder']}")
    with pytest.raises(MissingModelPartError, match=r"'base'.*stable-diffusion-v1-5.*G2I_MODEL_PATHS.*model_paths"):
        G2IModel.from_pretrained(tmp_path / "model", settings=settings)
    # a [model_paths] table in g2i.toml names it
    (tmp_path / "g2i.toml").write_text(f'[g2i]\nstorage_root = "file:///tmp"\n\n[model_paths]\n'
                                       f'base = "{weights["base"]}"\nimage_encoder = "{weights["image_encoder"]}"\n')
    loaded = G2IModel.from_pretrained(tmp_path / "model", settings=Settings.load(), variant="fp16")
    assert loaded.config.frozen_parts["base"] == "stable-diffusion-v1-5"
    assert torch.equal(loaded.unet.conv_in.weight, model.unet.conv_in.weight)
