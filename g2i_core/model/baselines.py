"""The paper's image-conditioned baselines, InstructPix2Pix and ControlNet, on the node's strongest neighbour.

Both see the node's text (the UNet context is the text context alone, no graph tokens) and ONE neighbour
image: the first neighbour with an image in the neighbour table's rank order, i.e. the strongest image
neighbour by the same semantic-PPR ranking our model reads. Both are built from diffusers' own parts
and trained by ``g2i_core.model.train`` with the same data, steps, seeds and ε-loss as ours.

InstructPix2Pix (``graph_mode="instructpix2pix"``)
    The UNet's input is [noisy latents ; neighbour latents] (channels doubled; the new input channels of
    ``conv_in`` start at zero, so a fresh model computes exactly the base UNet). Condition dropout as
    ours: text, image or both dropped (empty prompt / zero image latents). Sampling with two scales,
    three UNet branches (text+image, image only, neither):
        ε̂ = ε(∅,∅) + s_T·[ε(c_T,c_I) − ε(∅,c_I)] + s_I·[ε(∅,c_I) − ε(∅,∅)]
    ``graph_scale`` of the pipeline / suite is s_I.

ControlNet (``graph_mode="controlnet"``)
    ``diffusers.ControlNetModel`` reads the neighbour image (in [0, 1]) and adds zero-initialised residuals
    to the UNet's skip connections. sd15: ``ControlNetModel.from_unet`` (a trainable copy of the pretrained
    encoder) and the UNet frozen, as standard ControlNet training does, so the pretrained model is kept
    and only the control path learns. tiny presets: built fresh from the tiny UNet's config, and the UNet
    is trained with it: a random UNet has nothing to keep, and frozen it could not learn to denoise.
    As in standard ControlNet training only the prompt is dropped (with ours' text-dropout rate); the
    control is always given. Sampling: classifier-free guidance on the text, the control in both
    branches, ``graph_scale`` = the ControlNet conditioning scale (1.0 by default, diffusers' default):
        ε̂ = ε(∅,c) + s_T·[ε(c_T,c) − ε(∅,c)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from g2i_core.model.config import G2IConfig
from g2i_core.model.modeling import G2IModel, GraphInputs, NeighbourSet, pil_to_tensor
from g2i_core.model.pipeline import G2IPipeline, to_pil

if TYPE_CHECKING:
    from PIL import Image


def strongest_image(neighbours: NeighbourSet):
    """The first neighbour image in rank order (the neighbour table is ranked strongest first), or None."""
    return next((img for img in neighbours.images if img is not None), None)


class NeighbourImageBaseline(G2IModel):
    """Common part: text-only context, one neighbour image as the condition (in ``GraphInputs`` with N = 1,
    at the model's resolution, so the training loop and the data code stay the same)."""

    drops_condition = True  # the image condition follows the graph dropout of training
    default_scale = 1.0  # the pipeline's graph_scale when none is given

    def __init__(self, cfg: G2IConfig, text_encoder: nn.Module, tokenizer, unet: nn.Module,
                 image_encoder: nn.Module | None = None, vae: nn.Module | None = None):
        super().__init__(cfg, text_encoder, tokenizer, unet, image_encoder, vae)
        self.graph_tokens = None  # no graph tokens: the image goes in through the UNet's input / a ControlNet

    def prepare_graph(self, sets: list[NeighbourSet]) -> GraphInputs:
        R, B = self.config.resolution, len(sets)
        pixels = torch.zeros(B, 1, 3, R, R)
        present = torch.zeros(B, 1, dtype=torch.bool)
        for b, s in enumerate(sets):
            img = strongest_image(s)
            if img is not None:
                pixels[b, 0], present[b, 0] = pil_to_tensor(img, R), True
        no_text = torch.zeros(B, 1, 1, dtype=torch.long)
        return GraphInputs(pixels, present, no_text, no_text.clone(), torch.zeros(B, 1, dtype=torch.bool))

    def context(self, text_ids, text_attention, graph=None, drop_graph=None):
        text = self.encode_text(text_ids, text_attention)  # (B, L, D): the text context only
        return text, torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)

    def condition(self, graph: GraphInputs | None, batch: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        """The image condition (B, C, h, w); zeros for a dropped condition or a node without image neighbour."""
        R = self.config.resolution
        if graph is None:
            pixels = torch.zeros(batch, 3, R, R, device=self.device)
            present = torch.zeros(batch, dtype=torch.bool, device=self.device)
        else:
            pixels, present = graph.pixels[:, 0], graph.image_mask[:, 0]
        if drop is not None:
            present = present & ~drop.to(present.device)
        return self.encode_condition(pixels, present)

    def encode_condition(self, pixels: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("each baseline (InstructPix2PixModel, ControlNetBaseline) defines this")

    def predict_noise(self, sample, timesteps, text_ids, text_attention, graph, drop_graph=None):
        context, mask = self.context(text_ids, text_attention)
        cond = self.condition(graph, sample.shape[0], drop_graph if self.drops_condition else None)
        return self(sample, timesteps, context, mask, condition=cond)

    def forward(self, sample, timesteps, context, context_mask, condition: torch.Tensor | None = None):
        raise NotImplementedError("each baseline (InstructPix2PixModel, ControlNetBaseline) defines this")

    def _require(self, condition: torch.Tensor | None) -> None:
        if condition is None:
            raise ValueError(f"a {self.config.graph_mode} model needs its image condition: sample it with "
                             "g2i_core.model.baselines.BaselinePipeline (``own_pipeline`` picks it)")

    def guided_noise(self, x, t, ctx_text, ctx_empty, cond, text_scale: float, image_scale: float) -> torch.Tensor:
        raise NotImplementedError("each baseline (InstructPix2PixModel, ControlNetBaseline) defines this")


class InstructPix2PixModel(NeighbourImageBaseline):
    default_scale = 1.5  # diffusers' default image guidance scale

    def __init__(self, cfg: G2IConfig, text_encoder: nn.Module, tokenizer, unet: nn.Module,
                 image_encoder: nn.Module | None = None, vae: nn.Module | None = None):
        expand_input_channels(unet)
        super().__init__(cfg, text_encoder, tokenizer, unet, image_encoder, vae)

    def encode_condition(self, pixels, present):
        """Neighbour image -> what is concatenated to the latents: its VAE latents (the distribution's mode,
        unscaled, as InstructPix2Pix does), or in pixel space the image in [-1, 1]; zero when absent."""
        x = pixels * 2 - 1
        if self.vae is not None:
            with torch.no_grad():
                x = self.vae.encode(x.to(next(self.vae.parameters()).dtype)).latent_dist.mode()
        return x * present[:, None, None, None].to(x.dtype)

    def forward(self, sample, timesteps, context, context_mask, condition=None):
        self._require(condition)
        return self.unet(torch.cat([sample, condition.to(sample.dtype)], 1), timesteps, encoder_hidden_states=context,
                         encoder_attention_mask=context_mask.to(context.dtype)).sample

    def guided_noise(self, x, t, ctx_text, ctx_empty, cond, text_scale, image_scale):
        zeros = torch.zeros_like(cond)
        ctx = torch.cat([ctx_text, ctx_empty, ctx_empty])
        eps = self(torch.cat([x] * 3), t.expand(3 * x.shape[0]), ctx,
                   torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device),
                   condition=torch.cat([cond, cond, zeros]))
        e_full, e_image, e_none = eps.chunk(3)
        return e_none + text_scale * (e_full - e_image) + image_scale * (e_image - e_none)


def expand_input_channels(unet: nn.Module) -> None:
    """Give the UNet a second input of as many channels as its output (the image condition), with zero
    weights, so the expanded UNet computes exactly what it did. A UNet already expanded (a saved model
    being rebuilt) is left alone."""
    base, have = unet.config.out_channels, unet.config.in_channels
    if have == 2 * base:
        return
    if have != base:
        raise ValueError(f"InstructPix2Pix expects a UNet with in_channels == out_channels ({base}), got {have}")
    old = unet.conv_in
    new = nn.Conv2d(2 * base, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :base].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=2 * base)


class ControlNetBaseline(NeighbourImageBaseline):
    drops_condition = False  # standard ControlNet training: only the prompt is dropped
    default_scale = 1.0  # diffusers' default controlnet_conditioning_scale

    def __init__(self, cfg: G2IConfig, text_encoder: nn.Module, tokenizer, unet: nn.Module,
                 image_encoder: nn.Module | None = None, vae: nn.Module | None = None):
        from diffusers import ControlNetModel

        super().__init__(cfg, text_encoder, tokenizer, unet, image_encoder, vae)
        # The control image is at pixel resolution: its embedding halves it once per extra channel stage
        # until it meets the sample (3 times for the SD VAE's 8x latents, never in pixel space).
        stages = {1: 1, 2: 2, 4: 3, 8: 4}[cfg.latent_scale]
        pretrained = bool(cfg.unet_path)  # sd15 training: copy the pretrained encoder, freeze the UNet
        self.controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[:stages], load_weights_from_unet=pretrained)
        if pretrained:
            self.unet.requires_grad_(False)

    def enable_gradient_checkpointing(self) -> None:
        super().enable_gradient_checkpointing()
        self.controlnet.enable_gradient_checkpointing()

    def encode_condition(self, pixels, present):
        return pixels * present[:, None, None, None].to(pixels.dtype)  # in [0, 1]; absent: a black image

    def forward(self, sample, timesteps, context, context_mask, condition=None, conditioning_scale: float = 1.0):
        self._require(condition)
        down, mid = self.controlnet(sample, timesteps, encoder_hidden_states=context,
                                    controlnet_cond=condition.to(sample.dtype), conditioning_scale=conditioning_scale,
                                    return_dict=False)
        return self.unet(sample, timesteps, encoder_hidden_states=context, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample

    def guided_noise(self, x, t, ctx_text, ctx_empty, cond, text_scale, image_scale):
        ctx = torch.cat([ctx_empty, ctx_text])
        eps = self(torch.cat([x] * 2), t.expand(2 * x.shape[0]), ctx, None, condition=torch.cat([cond, cond]),
                   conditioning_scale=image_scale)
        e_empty, e_text = eps.chunk(2)
        return e_empty + text_scale * (e_text - e_empty)


def baseline_class(graph_mode: str) -> type[NeighbourImageBaseline]:
    return {"instructpix2pix": InstructPix2PixModel, "controlnet": ControlNetBaseline}[graph_mode]


class BaselinePipeline(G2IPipeline):
    """Sampling for the baselines; same schedulers, inputs and outputs as ``G2IPipeline``.
    ``graph_scale`` is InstructPix2Pix's image guidance scale s_I, or ControlNet's conditioning scale."""

    def prepare_latents(self, B: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        s = self.model.config.latent_scale
        shape = (B, self.model.unet.config.out_channels, height // s, width // s)  # IP2P's in_channels are doubled
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.model.device) \
            * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def __call__(self, prompts: list[str], neighbours: list | None = None, text_scale: float = 7.5,
                 graph_scale: float | Sequence[float] | None = None, num_inference_steps: int = 50,
                 generator: torch.Generator | None = None, seed: int | None = None, height: int | None = None,
                 width: int | None = None, output_type: str = "pil") -> "list[Image.Image] | torch.Tensor":
        model: NeighbourImageBaseline = self.model
        R = model.config.resolution
        height, width = height or R, width or R
        if (height, width) != (R, R):
            raise ValueError(f"the baselines sample at their training resolution {R} (the condition image is "
                             f"prepared at it), got {height}x{width}")
        if neighbours is not None and graph_scale is None:
            graph_scale = model.default_scale
        self.check_inputs(prompts, neighbours, text_scale, graph_scale, num_inference_steps, height, width)
        sets = None
        if neighbours is not None:
            if any(not isinstance(n, NeighbourSet) and len(n) != 1 for n in neighbours):
                raise ValueError(f"{model.config.graph_mode} takes one neighbour set per prompt (no style mixing)")
            sets = [n if isinstance(n, NeighbourSet) else n[0] for n in neighbours]
            scale = graph_scale if isinstance(graph_scale, (int, float)) else graph_scale[0]
        else:
            scale = 0.0  # no neighbours: the condition is absent (zeros), its scale has nothing to scale
        B, device = len(prompts), model.device
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        ids, att, u_ids, u_att = (t.to(device) for t in self.encode_prompts(prompts))
        ctx_text, _ = model.context(ids, att)
        ctx_empty, _ = model.context(u_ids, u_att)
        graph = model.prepare_graph(sets).to(device) if sets is not None else None
        cond = model.condition(graph, B)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = self.prepare_latents(B, height, width, generator)
        for t in self.scheduler.timesteps:
            x_in = self.scheduler.scale_model_input(x, t)  # the condition is appended unscaled, as IP2P does
            eps = model.guided_noise(x_in, t.to(device), ctx_text, ctx_empty, cond, float(text_scale), float(scale))
            x = self.scheduler.step(eps, t, x).prev_sample
        images = model.decode(x.to(torch.float32))
        return images.cpu() if output_type == "pt" else to_pil(images)


def own_pipeline(pipe: G2IPipeline) -> G2IPipeline:
    """A loaded pipeline as its model samples: a ``BaselinePipeline`` (same model and scheduler) for a
    baseline, the pipeline itself otherwise. ``G2IPipeline.from_pretrained`` loads any saved model."""
    if isinstance(pipe.model, NeighbourImageBaseline) and not isinstance(pipe, BaselinePipeline):
        return BaselinePipeline(pipe.model, pipe.scheduler)
    return pipe
