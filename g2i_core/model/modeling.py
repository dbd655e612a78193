"""InstructG2I: a text-to-image diffusion UNet whose context is [text tokens ; graph tokens].

    target text ──tokenize──> text encoder (frozen) ─────────────────────────┐ (B, L, D)
         │                                                                   ├─ concat ─> UNet context
         └──(queries)──> Graph-QFormer (copy of the text encoder, trainable) ┘ (B, L, D)
                              ↑ cross-attention every other layer
    neighbour images ─> CLIP vision ─> Linear -> 4 tokens/neighbour ─┐
    neighbour texts  ─> text encoder (mean pool) ─> Linear -> 4 tokens ─┴─ LayerNorm ─> graph tokens (B, G, D)

"∅_G" (no graph) is an all-masked graph context: the UNet then sees exactly the text context. Padded
neighbours are masked in the QFormer's cross-attention and in the UNet's context mask, so they change
nothing. Frozen modules loaded from a path (text encoder, VAE, pretrained vision encoder) are not
saved with the model; everything else is, in one safetensors file.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from g2i_core.model.config import G2IConfig, minilm_path

if TYPE_CHECKING:
    from PIL import Image

    from g2i_core.config import Settings
    from g2i_core.storage import Storage

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class NeighbourSet:
    """The graph condition of one node: its neighbours' images and texts (either may be None)."""

    images: list = field(default_factory=list)  # PIL images (None = neighbour without usable image)
    texts: list = field(default_factory=list)  # str (None = no text)
    image_keys: list = field(default_factory=list)  # content keys of the images (optional; enables the image cache)

    def __len__(self) -> int:
        return max(len(self.images), len(self.texts))


@dataclass
class GraphInputs:
    """Tensors of a batch of neighbour sets, padded to N = max_neighbours."""

    pixels: torch.Tensor  # (B, N, 3, S, S) in [0, 1]
    image_mask: torch.Tensor  # (B, N) bool: neighbour has an image
    text_ids: torch.Tensor  # (B, N, Lt) long
    text_attention: torch.Tensor  # (B, N, Lt) long, tokenizer attention mask
    text_mask: torch.Tensor  # (B, N) bool: neighbour has a text
    image_keys: tuple | None = None  # B*N content keys (None where no image), or None: no cache lookups

    def to(self, device) -> "GraphInputs":
        return GraphInputs(*(t.to(device) for t in (self.pixels, self.image_mask, self.text_ids,
                                                     self.text_attention, self.text_mask)), self.image_keys)

    @staticmethod
    def cat(items: list["GraphInputs"]) -> "GraphInputs":
        keys = None if any(g.image_keys is None for g in items) else tuple(k for g in items for k in g.image_keys)
        return GraphInputs(*(torch.cat([getattr(g, f) for g in items]) for f in
                             ("pixels", "image_mask", "text_ids", "text_attention", "text_mask")), keys)


# ---------------------------------------------------------------------------------------------
# Graph-QFormer
# ---------------------------------------------------------------------------------------------
class GraphCrossAttention(nn.Module):
    """Pre-norm residual cross-attention from text tokens to graph tokens.

    With ``zero_init`` the output projection starts at zero, so a fresh Graph-QFormer computes exactly
    its text encoder (off by default, like the reference; see docs/model.md).
    Rows whose graph tokens are all masked get a zero update (no NaNs from an empty softmax)."""

    def __init__(self, dim: int, heads: int, zero_init: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"QFormer dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        if zero_init:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, graph: torch.Tensor, graph_mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        G = graph.shape[1]
        h = self.norm(x)
        q = self.to_q(h).view(B, L, self.heads, -1).transpose(1, 2)  # (B, H, L, Dh)
        k = self.to_k(graph).view(B, G, self.heads, -1).transpose(1, 2)  # (B, H, G, Dh)
        v = self.to_v(graph).view(B, G, self.heads, -1).transpose(1, 2)
        any_valid = graph_mask.any(dim=1)  # (B,)
        keep = graph_mask | ~any_valid[:, None]  # an all-masked row attends to everything, then is zeroed
        bias = torch.zeros(B, 1, 1, G, dtype=q.dtype, device=q.device).masked_fill(~keep[:, None, None, :],
                                                                                    float("-inf"))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, L, Dh)
        a = a.transpose(1, 2).reshape(B, L, D)
        return x + self.to_out(a) * any_valid[:, None, None].to(x.dtype)


class GraphQFormer(nn.Module):
    """A copy of the text encoder (BERT or CLIP text layers) with graph cross-attention inserted after
    every ``cross_every``-th layer. Queries are the target's text tokens; output has their shape."""

    def __init__(self, text_encoder: nn.Module, num_layers: int = 0, cross_every: int = 2, heads: int = 0,
                 zero_init: bool = False):
        super().__init__()
        te = copy.deepcopy(text_encoder)
        layers = te.encoder.layer if hasattr(te.encoder, "layer") else te.encoder.layers  # BERT / CLIP
        n = num_layers or len(layers)
        if n > len(layers):
            raise ValueError(f"qformer_num_layers={n} but the text encoder has {len(layers)} layers")
        self.causal = te.config.model_type.startswith("clip")  # CLIP text self-attention is causal
        self.embeddings = te.embeddings
        self.layers = nn.ModuleList(layers[:n])
        self.final_norm = getattr(te, "final_layer_norm", None)
        dim, heads = te.config.hidden_size, heads or te.config.num_attention_heads
        self.cross = nn.ModuleDict({str(i): GraphCrossAttention(dim, heads, zero_init)
                                    for i in range(n) if i % cross_every == 0})
        self.gradient_checkpointing = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, graph_tokens: torch.Tensor,
                graph_mask: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(input_ids=input_ids)  # (B, L, D)
        bias = self_attention_bias(attention_mask, self.causal, h.dtype)  # (B, 1, L, L)
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(layer, h, bias, use_reentrant=False)
            else:
                h = layer(h, bias)
            if str(i) in self.cross:
                h = self.cross[str(i)](h, graph_tokens, graph_mask)
        return self.final_norm(h) if self.final_norm is not None else h


def text_encoder_states(encoder: nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Last hidden states of the frozen text encoder, called the way its model was trained: CLIP's text
    model unmasked (SD-1.5's UNet and the reference see all 77 states, padding included, and the empty
    prompt's states are the unconditional branch), BERT-style encoders (MiniLM) with the mask."""
    if getattr(getattr(encoder, "config", None), "model_type", "") in {"clip_text_model", "clip"}:
        return encoder(input_ids=ids).last_hidden_state
    return encoder(input_ids=ids, attention_mask=attention).last_hidden_state


def self_attention_bias(attention_mask: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 0/1 tokenizer mask -> (B, 1, L, L) additive bias (0 keep, dtype-min drop)."""
    B, L = attention_mask.shape
    keep = attention_mask[:, None, None, :].bool().expand(B, 1, L, L)
    if causal:
        keep = keep & torch.ones(L, L, dtype=torch.bool, device=attention_mask.device).tril()
    return torch.zeros(B, 1, L, L, dtype=dtype, device=attention_mask.device).masked_fill(~keep, torch.finfo(dtype).min)


class GraphTokens(nn.Module):
    """Neighbour embeddings -> ``tokens_per_neighbour`` tokens each -> LayerNorm; mask follows."""

    def __init__(self, cfg: G2IConfig, image_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.t = cfg.tokens_per_neighbour
        self.image_proj = nn.Linear(image_dim, self.t * dim) if cfg.uses_images else None
        self.text_proj = nn.Linear(text_dim, self.t * dim) if cfg.uses_texts else None
        self.norm = nn.LayerNorm(dim)

    def forward(self, image_embeds, image_mask, text_embeds, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, masks = [], []
        for proj, emb, mask in ((self.image_proj, image_embeds, image_mask), (self.text_proj, text_embeds, text_mask)):
            if proj is None:
                continue
            B, N, _ = emb.shape
            tokens.append(proj(emb).view(B, N * self.t, -1))  # (B, N*T, D)
            masks.append(mask.repeat_interleave(self.t, dim=1))  # (B, N*T)
        return self.norm(torch.cat(tokens, 1)), torch.cat(masks, 1)


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------
class G2IModel(nn.Module):
    def __init__(self, cfg: G2IConfig, text_encoder: nn.Module, tokenizer, unet: nn.Module,
                 image_encoder: nn.Module | None = None, vae: nn.Module | None = None):
        super().__init__()
        self.config = cfg
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval() if vae is not None else None
        self.unet = unet
        dim = text_encoder.config.hidden_size
        if unet.config.cross_attention_dim != dim:
            raise ValueError(f"unet cross_attention_dim {unet.config.cross_attention_dim} != text hidden size {dim}")
        self.image_encoder = None
        if cfg.uses_images:
            self.image_encoder = image_encoder.requires_grad_(cfg.train_image_encoder)
            if not cfg.train_image_encoder:
                self.image_encoder.eval()
        self.graph_tokens = None
        if cfg.uses_graph:
            image_dim = image_encoder.config.projection_dim if cfg.uses_images else 0
            self.graph_tokens = GraphTokens(cfg, image_dim, dim, dim)
        self.qformer = None
        if cfg.uses_qformer:
            self.qformer = GraphQFormer(text_encoder, cfg.qformer_num_layers, cfg.qformer_cross_every,
                                        cfg.qformer_heads, cfg.qformer_zero_init).float()  # trainable: fp32
            self.qformer.requires_grad_(True)
            self.qformer.embeddings.requires_grad_(False)  # token/position tables stay the text encoder's
        self.text_cache_size = 0  # frozen-encoder outputs kept per distinct token row (0 = no cache)
        self._text_cache: dict[bytes, torch.Tensor] = {}
        self.image_cache_size = 0  # frozen image-encoder outputs kept per image content key (0 = no cache)
        self._image_cache: dict[str, torch.Tensor] = {}
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    # ---- frozen/trainable bookkeeping ------------------------------------------------------
    def train(self, mode: bool = True) -> "G2IModel":
        super().train(mode)
        self.text_encoder.eval()  # frozen modules never switch to train mode (dropout off)
        if self.vae is not None:
            self.vae.eval()
        if self.image_encoder is not None and not self.config.train_image_encoder:
            self.image_encoder.eval()
        return self

    def external_prefixes(self) -> tuple[str, ...]:
        """Modules loaded from a path at build time and therefore not saved with the model."""
        out = ["text_encoder."]
        if self.vae is not None:
            out.append("vae.")
        if self.image_encoder is not None and self.config.image_encoder_path and not self.config.train_image_encoder:
            out.append("image_encoder.")
        return tuple(out)

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        skip = self.external_prefixes()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        if self.qformer is not None:
            self.qformer.gradient_checkpointing = True

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The UNet's dtype: frozen parts loaded in another dtype are cast to it."""
        return next(self.unet.parameters()).dtype

    # ---- text ------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, L), attention (B, L), always padded to L = text_max_length."""
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.config.text_max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def encode_text(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, D); the frozen text encoder. With ``text_cache_size`` > 0 (training sets it),
        rows seen before are served from a cache: the encoder is frozen, so this is exact."""
        if self.text_cache_size <= 0:
            with torch.no_grad():  # a frozen encoder in another dtype (torch_dtype=) feeds the UNet's
                return text_encoder_states(self.text_encoder, ids, attention).to(self.compute_dtype)
        keys = [r.tobytes() for r in torch.cat([ids, attention], 1).cpu().numpy()]
        todo = sorted({i for i, k in enumerate(keys) if k not in self._text_cache}, key=lambda i: keys[i])
        todo = list({keys[i]: i for i in todo}.values())  # one row per distinct text
        if todo:
            if len(self._text_cache) + len(todo) > self.text_cache_size:
                self._text_cache.clear()
            with torch.no_grad():
                h = text_encoder_states(self.text_encoder, ids[todo], attention[todo])
            for j, i in enumerate(todo):
                self._text_cache[keys[i]] = h[j]
        return torch.stack([self._text_cache[k] for k in keys]).to(self.compute_dtype)

    def pool_text(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """(M, Lt) -> (M, D) masked mean of the frozen text encoder (MiniLM's sentence embedding)."""
        h = self.encode_text(ids, attention)
        w = attention.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp(min=1)

    # ---- graph -----------------------------------------------------------------------------
    def prepare_graph(self, sets: list[NeighbourSet]) -> GraphInputs:
        """PIL images and strings of B neighbour sets -> padded tensors (CPU)."""
        N, S = self.config.max_neighbours, self.config.image_encoder_size
        B = len(sets)
        pixels = torch.zeros(B, N, 3, S, S)
        image_mask = torch.zeros(B, N, dtype=torch.bool)
        texts = [[""] * N for _ in range(B)]
        text_mask = torch.zeros(B, N, dtype=torch.bool)
        for b, s in enumerate(sets):
            if len(s) > N:
                raise ValueError(f"node {b} has {len(s)} neighbours but the model takes at most max_neighbours={N}")
            for n, img in enumerate(s.images):
                if img is not None:
                    pixels[b, n] = pil_to_tensor(img, S)
                    image_mask[b, n] = True
            for n, txt in enumerate(s.texts):
                if txt:
                    texts[b][n] = txt
                    text_mask[b, n] = True
        ids, att = self.tokenize([t for row in texts for t in row])
        keys = None
        if all(len(s.image_keys) == len(s.images) for s in sets):
            keys = tuple((s.image_keys[n] if n < len(s.images) and s.images[n] is not None else None)
                         for s in sets for n in range(N))
        return GraphInputs(pixels, image_mask, ids.view(B, N, -1), att.view(B, N, -1), text_mask, keys)

    def embed_neighbour_images(self, pixels: torch.Tensor, mask: torch.Tensor, keys: tuple | None) -> torch.Tensor:
        """Neighbour images (M, 3, S, S) in [0, 1] -> image embeddings (M, E).

        A frozen encoder with ``image_cache_size`` > 0 (training sets it) and content keys encodes each
        distinct image once and serves repeats from the cache (exact: the encoder never changes). Rows
        without an image are zeros then; the graph tokens mask them either way."""
        def encode(px: torch.Tensor) -> torch.Tensor:
            px = (px - self.clip_mean.to(px.dtype)) / self.clip_std.to(px.dtype)
            return self.image_encoder(pixel_values=px.to(self.image_encoder.dtype)).image_embeds.to(px.dtype)

        if self.config.train_image_encoder or self.image_cache_size <= 0 or keys is None:
            with torch.set_grad_enabled(self.config.train_image_encoder and torch.is_grad_enabled()):
                return encode(pixels)
        rows = mask.tolist()
        distinct = {keys[i]: i for i in range(len(keys)) if rows[i]}  # first row of each image
        todo = [i for k, i in distinct.items() if k not in self._image_cache]
        if len(self._image_cache) + len(todo) > self.image_cache_size:  # full: start over
            self._image_cache.clear()
            todo = list(distinct.values())
        if todo:
            with torch.no_grad():
                fresh = encode(pixels[todo])
            for j, i in enumerate(todo):
                self._image_cache[keys[i]] = fresh[j]
        # in the pixels' dtype: entries cached under autocast (bf16) also serve steps without it
        zero = torch.zeros(self.image_encoder.config.projection_dim, device=pixels.device, dtype=pixels.dtype)
        return torch.stack([self._image_cache[keys[i]].to(pixels.dtype) if rows[i] else zero
                            for i in range(len(keys))])

    def encode_graph(self, text_ids: torch.Tensor, text_attention: torch.Tensor,
                     graph: GraphInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Graph part of the UNet context -> (B, Lg, D), mask (B, Lg) bool."""
        B, N = graph.image_mask.shape
        image_embeds = text_embeds = None
        if self.config.uses_images:
            image_embeds = self.embed_neighbour_images(graph.pixels.flatten(0, 1), graph.image_mask.flatten(),
                                                       graph.image_keys).view(B, N, -1)  # (B, N, E)
            image_embeds = image_embeds.to(self.graph_tokens.norm.weight.dtype)
        if self.config.uses_texts:
            text_embeds = self.pool_text(graph.text_ids.flatten(0, 1),
                                         graph.text_attention.flatten(0, 1)).view(B, N, -1)
        tokens, mask = self.graph_tokens(image_embeds, graph.image_mask, text_embeds, graph.text_mask)  # (B, G, D)
        if self.qformer is None:  # no_qformer: graph tokens straight into the context
            return tokens, mask
        out = self.qformer(text_ids, text_attention, tokens, mask)  # (B, L, D)
        return out, mask.any(dim=1, keepdim=True).expand(-1, out.shape[1])

    def context(self, text_ids: torch.Tensor, text_attention: torch.Tensor, graph: GraphInputs | None,
                drop_graph: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """UNet context (B, L + Lg, D) and its mask (B, L + Lg). ``drop_graph`` (B,) bool or graph=None
        gives ∅_G: a zero, fully masked graph part, so the UNet sees the text context only."""
        text = self.encode_text(text_ids, text_attention)  # (B, L, D)
        B, L, _ = text.shape
        text_mask = torch.ones(B, L, dtype=torch.bool, device=text.device)
        if not self.config.uses_graph:
            return text, text_mask
        if graph is None:
            g, gm = self.empty_graph_context(B, text)
        else:
            g, gm = self.encode_graph(text_ids, text_attention, graph)
            if drop_graph is not None:
                keep = ~drop_graph.to(g.device)
                g = g * keep[:, None, None].to(g.dtype)
                gm = gm & keep[:, None]
        return torch.cat([text, g], 1), torch.cat([text_mask, gm], 1)

    def graph_context_len(self) -> int:
        if self.qformer is not None:
            return self.config.text_max_length
        per = self.config.max_neighbours * self.config.tokens_per_neighbour
        return per * (int(self.config.uses_images) + int(self.config.uses_texts))

    def empty_graph_context(self, B: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Lg = self.graph_context_len()
        return (torch.zeros(B, Lg, like.shape[-1], dtype=like.dtype, device=like.device),
                torch.zeros(B, Lg, dtype=torch.bool, device=like.device))

    # ---- diffusion -------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor) -> torch.Tensor:
        """ε prediction: sample (B, C, h, w), timesteps (B,), context (B, T, D), mask (B, T) -> (B, C, h, w)."""
        return self.unet(sample, timesteps, encoder_hidden_states=context,
                         encoder_attention_mask=context_mask.to(context.dtype)).sample

    def predict_noise(self, sample: torch.Tensor, timesteps: torch.Tensor, text_ids: torch.Tensor,
                      text_attention: torch.Tensor, graph: GraphInputs | None,
                      drop_graph: torch.Tensor | None = None) -> torch.Tensor:
        """ε of a training batch from its raw conditions (the training loss calls this; the baselines in
        model/baselines.py override it to feed their image condition)."""
        context, mask = self.context(text_ids, text_attention, graph, drop_graph=drop_graph)
        return self(sample, timesteps, context, mask)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Target images (B, 3, R, R) in [-1, 1] -> diffusion space (latents, or pixels as they are)."""
        if self.vae is None:
            return pixels
        with torch.no_grad():
            latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.sample().to(pixels.dtype)
            return latents * self.config.vae_scaling_factor

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> images (B, 3, R, R) in [0, 1]."""
        if self.vae is not None:
            x = self.vae.decode((x / self.config.vae_scaling_factor).to(self.vae.dtype)).sample.float()
        return (x / 2 + 0.5).clamp(0, 1)

    # ---- persistence -----------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``config.json`` + ``model.safetensors`` (every non-external tensor, bit-exact)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = self.config.replace(unet_path="", unet_config=dict(self.unet.config))
        if self.image_encoder is not None and self.config.train_image_encoder:
            cfg = cfg.replace(image_encoder_path="", image_encoder_config=self.image_encoder.config.to_diff_dict())
        state = {k: v.detach().contiguous().cpu() for k, v in self.saved_state_dict().items()}
        save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt", "g2i": "instructg2i"})
        (d / CONFIG_NAME).write_text(json.dumps(_jsonable(cfg.to_dict()), indent=2, sort_keys=True))

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, storage: "Storage | None" = None,
                        device: str | torch.device = "cpu", *, settings: "Settings | None" = None,
                        part_paths: dict[str, str] | None = None, variant: str | None = None,
                        torch_dtype: "torch.dtype | str | None" = None) -> "G2IModel":
        """Load from a local directory or a storage URI (file://, s3://). safetensors only: nothing read
        from storage is ever unpickled.

        Frozen parts named by role in config.json (``frozen_parts``) are found on this machine through
        ``part_paths`` (role -> folder), else ``settings`` (``Settings.model_part_paths()``: G2I_MODEL_PATHS,
        [model_paths] in g2i.toml, sd15_path, clip_vision_path), else ``Settings.load()``.
        ``variant`` loads e.g. the ``fp16`` weight files of the frozen folders where they have them;
        ``torch_dtype`` (e.g. torch.float16 or "bf16") casts the whole model for inference."""
        from safetensors.torch import load_file

        source = str(source)
        if "://" in source:
            with tempfile.TemporaryDirectory(prefix="g2i-model-") as tmp:
                _download_model(source, Path(tmp), storage)
                return cls.from_pretrained(tmp, device=device, settings=settings, part_paths=part_paths,
                                           variant=variant, torch_dtype=torch_dtype)
        d = Path(source)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d / name} not found: expected a folder written by G2IModel.save_pretrained")
        cfg = G2IConfig.from_dict(json.loads((d / CONFIG_NAME).read_text()))
        if cfg.frozen_parts:
            if part_paths is None:
                from g2i_core.config import Settings

                part_paths = (settings or Settings.load()).model_part_paths()
            cfg = cfg.with_part_paths(part_paths)
        dtype = parse_dtype(torch_dtype)
        model = build_model(cfg, variant=variant, torch_dtype=dtype)
        state = load_file(str(d / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(model.external_prefixes())]
        if missing or unexpected:
            raise ValueError(f"{d / WEIGHTS_NAME} does not match the config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return model.to(device, dtype) if dtype is not None else model.to(device)


def _download_model(uri: str, dest: Path, storage: "Storage | None") -> None:
    """Copy config + weights of a model URI into ``dest`` (any Storage can read any URI of its scheme)."""
    from g2i_core.storage import Storage

    if storage is None:
        if uri.startswith("s3://"):
            from g2i_core.config import Settings

            storage = Storage.from_settings(Settings.load())
        else:
            storage = Storage("file:///")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (dest / name).write_bytes(storage.get_bytes(uri.rstrip("/") + "/" + name))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def pil_to_tensor(img: "Image.Image", size: int, *, flip: bool = False) -> torch.Tensor:
    """PIL image -> (3, size, size) float in [0, 1]: ``imageprep.square_image`` (white pad to a square,
    bicubic resize, optional horizontal flip), the preprocessing every model input goes through."""
    from g2i_core.imageprep import square_image

    img = square_image(img, size, flip=flip)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------
# Building from a config (presets)
# ---------------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(value: "torch.dtype | str | None") -> "torch.dtype | None":
    """None/"" (keep), a torch dtype, or one of ``DTYPES``' names."""
    if value is None or value == "" or isinstance(value, torch.dtype):
        return value or None
    if value not in DTYPES:
        raise ValueError(f"torch_dtype must be one of {sorted(DTYPES)}, got {value!r}")
    return DTYPES[value]


def _variant_kwargs(path: str, variant: str | None) -> dict:
    """``variant=`` for a folder that has weight files of that variant (e.g. ``*.fp16.safetensors``);
    folders without them load their default files, so one variant setting serves mixed layouts."""
    if variant and any(f".{variant}." in p.name for p in Path(path).iterdir()):
        return {"variant": variant}
    return {}


def _clip_vision_config(path: str) -> dict:
    """``config=`` for a full CLIPModel folder (both towers, as CLIP ViT-L/14 comes): the projection size
    is the top-level ``projection_dim``, which a saved ``vision_config`` need not repeat (the vision
    config's own default, 512, would then mismatch the checkpoint's projection)."""
    from transformers import CLIPVisionConfig

    data = json.loads((Path(path) / "config.json").read_text())
    if data.get("model_type") != "clip" or "projection_dim" not in data:
        return {}
    return {"config": CLIPVisionConfig(**{**data.get("vision_config", {}), "projection_dim": data["projection_dim"]})}


def build_model(cfg: G2IConfig, *, variant: str | None = None, torch_dtype: "torch.dtype | None" = None) -> G2IModel:
    """Instantiate every component the config names; paths must be local (HF_HUB_OFFLINE semantics).

    Role references ("role://base/vae") resolve through ``cfg.part_paths``. ``variant``: weight-file
    variant of the folders loaded (e.g. "fp16"). ``torch_dtype``: dtype of the frozen parts (text
    encoder, VAE, frozen image encoder); trainable parts are built in float32 (cast the model after
    building to sample in another dtype)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # 1. Text encoder + tokenizer (frozen).
    frozen = {"dtype": torch_dtype} if torch_dtype is not None else {}
    if cfg.text_encoder_config:
        te_cfg = dict(cfg.text_encoder_config)
        text_encoder = AutoModel.from_config(AutoConfig.for_model(te_cfg.pop("model_type"), **te_cfg))
        tokenizer = None  # random-weight builds (tests) pass token ids directly
    else:
        te_path = cfg.resolve(cfg.text_encoder_path) or minilm_path()
        _check_dir("text_encoder_path", te_path)
        text_encoder = AutoModel.from_pretrained(te_path, local_files_only=True, **frozen,
                                                 **_variant_kwargs(te_path, variant))
        tokenizer = AutoTokenizer.from_pretrained(cfg.resolve(cfg.tokenizer_path) or te_path, local_files_only=True)
    if hasattr(text_encoder, "pooler"):
        text_encoder.pooler = None  # unused; keeps every parameter accounted for
    # 2. VAE (frozen) or pixel space.
    vae = None
    if cfg.vae_path:
        vae_path = _check_dir("vae_path", cfg.resolve(cfg.vae_path))
        vae = AutoencoderKL.from_pretrained(vae_path, **_variant_kwargs(vae_path, variant),
                                            **({"torch_dtype": torch_dtype} if torch_dtype is not None else {}))
    elif cfg.vae_config:
        vae = AutoencoderKL(**cfg.vae_config)
    # 3. Neighbour image encoder.
    image_encoder = None
    if cfg.uses_images:
        if cfg.image_encoder_path:
            ie_path = _check_dir("image_encoder_path", cfg.resolve(cfg.image_encoder_path))
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(
                ie_path, local_files_only=True, **_variant_kwargs(ie_path, variant), **_clip_vision_config(ie_path),
                **(frozen if not cfg.train_image_encoder else {}))
        else:
            image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg.image_encoder_config))
    # 4. UNet (trainable).
    if cfg.unet_path:
        unet_path = _check_dir("unet_path", cfg.resolve(cfg.unet_path))
        # trainable: float32 whatever the files hold (an fp16 variant is upcast)
        unet = UNet2DConditionModel.from_pretrained(unet_path, **_variant_kwargs(unet_path, variant)).float()
    else:
        unet = UNet2DConditionModel(**{k: v for k, v in cfg.unet_config.items() if not k.startswith("_")})
    return model_class(cfg)(cfg, text_encoder, tokenizer, unet, image_encoder, vae)


def model_class(cfg: G2IConfig) -> type[G2IModel]:
    """G2IModel, or the subclass of a GNN ablation / image-conditioned baseline (imported on use)."""
    if cfg.graph_mode in ("gnn_sage", "gnn_gat"):
        from g2i_core.model.gnn import GNNG2IModel

        return GNNG2IModel
    if cfg.graph_mode in ("instructpix2pix", "controlnet"):
        from g2i_core.model.baselines import baseline_class

        return baseline_class(cfg.graph_mode)
    return G2IModel


def _check_dir(name: str, path: str) -> str:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{name}={path!r} is not a local directory (weights are never downloaded)")
    return path


def make_noise_scheduler(cfg: G2IConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end, prediction_type="epsilon",
                         clip_sample=False)
