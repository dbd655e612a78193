"""Graph-guided sampling: text and graph classifier-free guidance with three (or K + 2) branches.

    ε̂ = ε(∅,∅) + Σ_k s_k·[ε(c_T, G_k) − ε(c_T, ∅_G)] + s_T·[ε(c_T, ∅_G) − ε(∅,∅)]

One graph (K = 1) is InstructG2I's three-branch formula with s_G = s_1. Every branch of a step goes
through the UNet as one batch. Scales are used exactly as written, for every value: s_T = 1 does not
skip the unconditional branch, s_T ≤ 1 does not drop guidance, 0 gives the formula's value.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import torch

from g2i_core.model.config import sampling_defaults
from g2i_core.model.modeling import G2IModel, GraphInputs, NeighbourSet

if TYPE_CHECKING:
    from PIL import Image

    from g2i_core.config import Settings

SCHEDULERS = ("ddim", "dpm", "ddpm")


def combine_guidance(eps_uncond: torch.Tensor, eps_text: torch.Tensor, eps_graphs: Sequence[torch.Tensor],
                     text_scale: float, graph_scales: Sequence[float]) -> torch.Tensor:
    """The guidance formula on already-computed branch predictions (all (B, C, h, w))."""
    out = eps_uncond + text_scale * (eps_text - eps_uncond)
    for s, eps_g in zip(graph_scales, eps_graphs, strict=True):
        out = out + s * (eps_g - eps_text)
    return out


def make_scheduler(name: str, model_config):
    """A sampling scheduler matching the training noise schedule: "ddim", "dpm" (DPM-Solver++) or "ddpm"."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    kw = dict(num_train_timesteps=model_config.num_train_timesteps, beta_schedule=model_config.beta_schedule,
              beta_start=model_config.beta_start, beta_end=model_config.beta_end, prediction_type="epsilon")
    # In pixel space (tiny) the x0 estimate at high t divides by sqrt(ᾱ_t) ≈ 0 and explodes unless it is
    # clipped to the image range [-1, 1]; latents (sd15) are unbounded and must not be clipped.
    pixels = model_config.latent_scale == 1
    if name == "ddim":
        return DDIMScheduler(**kw, clip_sample=pixels, set_alpha_to_one=False, timestep_spacing="trailing")
    if name == "dpm":
        return DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2,
                                           timestep_spacing="trailing", thresholding=pixels, sample_max_value=1.0)
    if name == "ddpm":
        return DDPMScheduler(**kw, clip_sample=pixels, timestep_spacing="trailing")
    raise ValueError(f"scheduler must be one of {SCHEDULERS} or a diffusers scheduler instance, got {name!r}")


class G2IPipeline:
    def __init__(self, model: G2IModel, scheduler="ddim"):
        self.model = model.eval()
        self._scheduler = None
        self.scheduler = scheduler

    @property
    def scheduler(self):
        return self._scheduler

    @scheduler.setter
    def scheduler(self, value) -> None:
        self._scheduler = make_scheduler(value, self.model.config) if isinstance(value, str) else value

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, settings: "Settings | None" = None, scheduler="ddim",
                        device: str | torch.device = "cpu", *, variant: str | None = None,
                        torch_dtype: "torch.dtype | str | None" = None) -> "G2IPipeline":
        """A saved model (local folder or storage URI); its frozen parts are found through ``settings``
        (see ``G2IModel.from_pretrained``: roles, ``variant``, ``torch_dtype``)."""
        storage = None
        if settings is not None and "://" in str(source):
            from g2i_core.storage import Storage

            storage = Storage.from_settings(settings)
        return cls(G2IModel.from_pretrained(source, storage=storage, device=device, settings=settings,
                                            variant=variant, torch_dtype=torch_dtype), scheduler)

    # ---------------------------------------------------------------------------------------
    def check_inputs(self, prompts, neighbours, text_scale, graph_scale, num_inference_steps, height, width):
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        if not prompts:
            raise ValueError("prompts is empty")
        if neighbours is None:
            if graph_scale is not None:
                raise ValueError(f"graph_scale={graph_scale} was given but neighbours is None: without a graph "
                                 "there is no graph term; pass neighbours or leave graph_scale=None")
        else:
            if len(neighbours) != len(prompts):
                raise ValueError(f"neighbours has {len(neighbours)} entries but prompts has {len(prompts)}; "
                                 "give one NeighbourSet (or one list of them, for mixing) per prompt")
            counts = {1 if isinstance(n, NeighbourSet) else len(n) for n in neighbours}
            if len(counts) != 1:
                raise ValueError(f"every prompt needs the same number of graphs to mix, got counts {sorted(counts)}")
            k = counts.pop()
            scales = [graph_scale] if isinstance(graph_scale, (int, float)) else list(graph_scale or [])
            if graph_scale is not None and len(scales) != k:
                raise ValueError(f"graph_scale has {len(scales)} values but each prompt has {k} graph(s)")
            if not self.model.config.uses_graph:
                raise ValueError("this model was trained with graph_mode='none'; it takes no neighbours")
        if not isinstance(text_scale, (int, float)):
            raise ValueError(f"text_scale must be a number, got {text_scale!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        div = 8 * self.model.config.latent_scale
        for name, v in (("height", height), ("width", width)):
            if v % div:
                raise ValueError(f"{name} has to be divisible by {div} but is {v}")

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, att = self.model.tokenize(prompts)
        uncond_ids, uncond_att = self.model.tokenize([""] * len(prompts))
        return ids, att, uncond_ids, uncond_att

    def prepare_latents(self, B: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        s = self.model.config.latent_scale
        shape = (B, self.model.unet.config.in_channels, height // s, width // s)
        x = torch.randn(shape, generator=generator, dtype=torch.float32)
        return x.to(self.model.device) * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def __call__(self, prompts: list[str], neighbours: list | None = None, text_scale: float | None = None,
                 graph_scale: float | Sequence[float] | None = None, num_inference_steps: int = 50,
                 generator: torch.Generator | None = None, seed: int | None = None, height: int | None = None,
                 width: int | None = None, output_type: str = "pil") -> "list[Image.Image] | torch.Tensor":
        """Images for ``prompts``; ``neighbours`` gives one NeighbourSet per prompt, or per prompt a list
        of K NeighbourSets mixed with ``graph_scale`` = K scales. output_type "pil" or "pt" ((B,3,H,W) in [0,1]).
        Scales left None are the model preset's (``config.sampling_defaults``: sd15 7.5/1.5, tiny 3/4)."""
        model = self.model
        defaults = sampling_defaults(model.config.preset)
        if text_scale is None:
            text_scale = defaults["text_scale"]
        height = height or model.config.resolution  # default: the training resolution
        width = width or model.config.resolution
        if neighbours is not None and graph_scale is None:
            graph_scale = defaults["graph_scale"]
        # 1. Check inputs
        self.check_inputs(prompts, neighbours, text_scale, graph_scale, num_inference_steps, height, width)
        B, device = len(prompts), model.device
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)

        # 2. Encode prompts: conditional and empty ("∅") text
        ids, att, u_ids, u_att = (t.to(device) for t in self.encode_prompts(prompts))

        # 3. Build one context per branch: [∅,∅], [c_T,∅_G], [c_T,G_1] ... [c_T,G_K]
        ctx_u, mask_u = model.context(u_ids, u_att, None)  # (B, T, D)
        ctx_t, mask_t = model.context(ids, att, None)
        ctxs, masks, scales = [ctx_u, ctx_t], [mask_u, mask_t], []
        if neighbours is not None:
            per_prompt = [[n] if isinstance(n, NeighbourSet) else list(n) for n in neighbours]
            scales = [float(graph_scale)] if isinstance(graph_scale, (int, float)) else [float(s) for s in graph_scale]
            for k in range(len(scales)):
                graph: GraphInputs = model.prepare_graph([sets[k] for sets in per_prompt]).to(device)
                c, m = model.context(ids, att, graph)
                ctxs.append(c)
                masks.append(m)
        n_branches = len(ctxs)
        context, context_mask = torch.cat(ctxs), torch.cat(masks)  # (n_branches * B, T, D)

        # 4. Timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = self.prepare_latents(B, height, width, generator)

        # 5. Denoising loop: all branches in one UNet call per step
        for t in self.scheduler.timesteps:
            x_in = self.scheduler.scale_model_input(torch.cat([x] * n_branches), t)
            eps = model(x_in.to(context.dtype), t.expand(x_in.shape[0]).to(device), context,
                        context_mask).float().chunk(n_branches)  # the scheduler steps in float32
            eps_hat = combine_guidance(eps[0], eps[1], eps[2:], float(text_scale), scales)
            x = self.scheduler.step(eps_hat, t, x).prev_sample

        # 6. Decode
        images = model.decode(x.to(torch.float32))  # (B, 3, H, W) in [0, 1]
        if output_type == "pt":
            return images.cpu()
        return to_pil(images)


def to_pil(images: torch.Tensor) -> "list[Image.Image]":
    from PIL import Image

    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arr]
