"""Training: ε-prediction MSE with condition dropout, checkpoints in the object store, exact resume.

Determinism: the batch of step s (which nodes) and every random draw of step s (noise, timesteps,
dropout masks, module dropout) are functions of (seed, s, process index) alone. A run resumed from
``checkpoint-<s>`` (weights + optimizer state, both safetensors) therefore continues the loss
trajectory of an uninterrupted run exactly (on CPU).

Object store layout (under ``<root>/models/<run_id>/``)::

    checkpoint-<step>/model.safetensors, config.json, optimizer.safetensors, optimizer.json,
                      trainer_state.json     <- written last: a checkpoint without it is ignored
    config.json, model.safetensors, train_config.json, metrics.json   <- the final model
    _COMMITTED.json                      <- written last (names the graph run it trained on): a run
                                            without it is not a finished model
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from g2i_core.model.config import (
    GRAPH_MODES,
    PRESETS,
    G2IConfig,
    sd15_config,
    sd15_paper_config,
    tiny16_config,
    tiny_config,
)
from g2i_core.model.data import ImageCache, NodeRecord, Prefetcher, condition_of, load_records
from g2i_core.model.modeling import G2IModel, build_model, make_noise_scheduler, parse_dtype, pil_to_tensor

if TYPE_CHECKING:
    from g2i_core.config import Settings
    from g2i_core.storage import Storage

log = logging.getLogger(__name__)


LR_SCHEDULES = ("cosine", "constant")
WEIGHTS_FILE = "model.safetensors"
COMMIT_FILE = "_COMMITTED.json"  # written after every other file of the final model


def learning_rate(cfg: "TrainConfig", step: int) -> float:
    """lr of optimizer step ``step`` (1-based): linear warmup, then constant or cosine decay to 0.

    A function of the step alone, so a resumed run continues the same curve. Decay matters for the
    weights the run ends with: at a constant lr the last iterate still moves with the last batches,
    and what the model generates then differs more between training seeds."""
    warm = max(cfg.lr_warmup_steps, 1)
    if step < warm:
        return cfg.lr * step / warm
    if cfg.lr_schedule == "constant" or cfg.steps <= warm:
        return cfg.lr
    progress = (step - warm) / (cfg.steps - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class TrainConfig:
    run_id: str = "tiny"
    preset: str = ""  # "" = settings.model_preset; "tiny" | "tiny16" | "sd15" | "sd15-paper"
    graph_mode: str = ""  # see GRAPH_MODES; "" = the preset's (sd15-paper: images_only, else qformer)
    storage_root: str = ""  # "" = settings.storage_root
    nodes_table: str = "graph_nodes"  # falls back to "nodes"
    images_table: str = "node_images"
    neighbours_table: str = "neighbours"
    split: str = "train"  # "" = every node with an image
    resolution: int = 0  # 0 = the preset's resolution
    max_neighbours: int = 5
    steps: int = 3000  # optimizer steps in total (a resumed run counts the steps already done)
    batch_size: int = 32  # per step, over all processes
    lr: float = 3e-4
    lr_warmup_steps: int = 100
    lr_schedule: str = "cosine"  # after the warmup: "cosine" (to 0 at the last step) | "constant"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    p_drop_text: float = 0.05  # drop the text only (empty prompt)
    p_drop_graph: float = 0.05  # drop the graph only (∅_G)
    p_drop_both: float = 0.05  # drop both: trains ε(∅, ∅)
    random_flip: bool = False  # flip training targets horizontally at random (sd15 presets; never neighbours)
    mixed_precision: str = "auto"  # "auto" (bf16 on GPU, none on CPU) | "no" | "fp16" | "bf16"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    checkpoints_keep: int = 2
    resume: bool = True
    log_every: int = 50
    prefetch: int = 4  # batches built ahead on a worker thread
    num_threads: int = 0  # torch CPU threads; 0 = torch's default (1 is much faster on an oversubscribed CPU)
    graph_run_id: str = ""  # the MMAG version (run id of graph_nodes/node_images/neighbours); "" = the live one
    model_overrides: dict = field(default_factory=dict)  # extra G2IConfig fields
    variant: str = ""  # weight-file variant of the loaded folders (e.g. "fp16"; the UNet is upcast to fp32)
    torch_dtype: str = ""  # dtype of the frozen parts: "" (as loaded, fp32) | "fp16" | "bf16" | "fp32"

    def __post_init__(self) -> None:
        if self.graph_mode and self.graph_mode not in GRAPH_MODES:
            raise ValueError(f"graph_mode must be one of {GRAPH_MODES}, got {self.graph_mode!r}")
        probs = (self.p_drop_text, self.p_drop_graph, self.p_drop_both)
        if min(probs) < 0 or sum(probs) > 1:
            raise ValueError(f"dropout probabilities must be >= 0 and sum to <= 1, got {probs}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError(f"steps, batch_size and checkpoint_every must be >= 1, got "
                             f"{self.steps}, {self.batch_size}, {self.checkpoint_every}")


@dataclass
class TrainResult:
    model_uri: str
    losses: dict[int, float]  # step -> loss of that step (all steps of the run, resumed ones included)
    steps_per_s: float  # of the steps run by this call
    images_per_s: float
    train_seconds: float
    resumed_from: int  # 0 = fresh start


def model_config_for(cfg: TrainConfig, settings: "Settings") -> G2IConfig:
    preset = cfg.preset or settings.model_preset
    over = dict(max_neighbours=cfg.max_neighbours, **cfg.model_overrides)
    if cfg.graph_mode:
        over["graph_mode"] = cfg.graph_mode
    if cfg.resolution:
        over["resolution"] = cfg.resolution
    if preset == "tiny":
        return tiny_config(**over)
    if preset == "tiny16":
        return tiny16_config(**over)
    if preset == "sd15":
        parts = settings.model_part_paths()  # G2I_MODEL_PATHS / [model_paths], else sd15_path, clip_vision_path
        return sd15_config(parts.get("base", ""), parts.get("image_encoder", ""), **over)
    if preset == "sd15-paper":
        parts = settings.model_part_paths()
        return sd15_paper_config(parts.get("base", ""), parts.get("image_encoder", ""), **over)
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")


# ---------------------------------------------------------------------------------------------
# Condition dropout and the loss
# ---------------------------------------------------------------------------------------------
def dropout_masks(u: torch.Tensor, p_text: float, p_graph: float, p_both: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform draws u (B,) -> (drop_text, drop_graph) bool (B,); the three events are disjoint."""
    both = u < p_both
    text_only = (u >= p_both) & (u < p_both + p_text)
    graph_only = (u >= p_both + p_text) & (u < p_both + p_text + p_graph)
    return both | text_only, both | graph_only


class DiffusionLoss(nn.Module):
    """The whole forward of a training step in one module, so DDP sees every trainable parameter."""

    def __init__(self, model: G2IModel):
        super().__init__()
        self.model = model

    def forward(self, x0, noise, timesteps, alphas_cumprod, ids, att, graph, drop_graph):
        a = alphas_cumprod[timesteps].to(x0.dtype).view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise  # q(x_t | x_0)
        eps = self.model.predict_noise(noisy, timesteps, ids, att, graph, drop_graph)
        return F.mse_loss(eps.float(), noise.float())


# ---------------------------------------------------------------------------------------------
# Batches: a pure function of (seed, step)
# ---------------------------------------------------------------------------------------------
class BatchMaker:
    def __init__(self, model: G2IModel, records: list[NodeRecord], images: ImageCache, batch_size: int,
                 seed: int, rank: int = 0, world: int = 1, random_flip: bool = False):
        self.model, self.records, self.images = model, records, images
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.random_flip = random_flip
        self._perms: dict[int, torch.Tensor] = {}

    def indices(self, step: int) -> list[int]:
        """Record indices of (1-based) ``step``: consecutive slices of one permutation per epoch."""
        n, out = len(self.records), []
        for p in range((step - 1) * self.batch_size, step * self.batch_size):
            epoch, j = divmod(p, n)
            if epoch not in self._perms:
                gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
                self._perms[epoch] = torch.randperm(n, generator=gen)
            out.append(int(self._perms[epoch][j]))
        return out[self.rank::self.world]

    def flips(self, step: int) -> list[bool]:
        """Which targets of ``step`` are flipped: drawn from (seed, step) alone, like the batch itself."""
        if not self.random_flip:
            return [False] * len(range(self.rank, self.batch_size, self.world))
        gen = torch.Generator().manual_seed(self.seed * 15_485_863 + step)
        return (torch.rand(self.batch_size, generator=gen) < 0.5).tolist()[self.rank::self.world]

    def __call__(self, step: int) -> dict:
        recs = [self.records[i] for i in self.indices(step)]
        R = self.model.config.resolution
        pixels = torch.stack([pil_to_tensor(self.images.get(r.image_key), R, flip=f)
                              for r, f in zip(recs, self.flips(step), strict=True)]) * 2 - 1  # (B,3,R,R)
        ids, att = self.model.tokenize([r.text for r in recs])
        graph = self.model.prepare_graph([condition_of(r, self.images).neighbours for r in recs]) \
            if self.model.config.uses_graph else None
        return {"pixels": pixels, "ids": ids, "att": att, "graph": graph}


# ---------------------------------------------------------------------------------------------
# Checkpoints (safetensors + JSON only)
# ---------------------------------------------------------------------------------------------
def _optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": v.detach().contiguous().cpu() for pid, st in sd["state"].items()
               for k, v in st.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(storage: "Storage", run_uri: str, step: int, model: G2IModel, opt, losses: dict[int, float],
                    cfg: TrainConfig) -> str:
    from safetensors.torch import save as st_save

    uri = f"{run_uri}/checkpoint-{step}"
    with tempfile.TemporaryDirectory(prefix="g2i-ckpt-") as tmp:
        model.save_pretrained(tmp)
        for name in ("model.safetensors", "config.json"):
            storage.put_bytes(f"{uri}/{name}", (Path(tmp) / name).read_bytes())
    tensors, meta = _optimizer_to_files(opt)
    storage.put_bytes(f"{uri}/optimizer.safetensors", st_save(tensors))
    storage.put_json(f"{uri}/optimizer.json", meta)
    storage.put_json(f"{uri}/trainer_state.json", {"step": step, "losses": {str(k): v for k, v in losses.items()},
                                                  "train_config": dataclasses.asdict(cfg)})  # commit point
    return uri


def list_checkpoints(storage: "Storage", run_uri: str) -> list[int]:
    """Steps of the complete checkpoints of a run (trainer_state.json present), ascending."""
    steps = set()
    for uri in storage.list(run_uri):
        m = re.search(r"/checkpoint-(\d+)/trainer_state\.json$", uri)
        if m:
            steps.add(int(m.group(1)))
    return sorted(steps)


def load_checkpoint(storage: "Storage", run_uri: str, step: int, model: G2IModel, opt) -> dict[int, float]:
    from safetensors.torch import load as st_load

    uri = f"{run_uri}/checkpoint-{step}"
    state = st_load(storage.get_bytes(f"{uri}/model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(model.external_prefixes())]
    if missing or unexpected:
        raise ValueError(f"{uri} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    _optimizer_from_files(opt, st_load(storage.get_bytes(f"{uri}/optimizer.safetensors")),
                          storage.get_json(f"{uri}/optimizer.json"))
    return {int(k): v for k, v in storage.get_json(f"{uri}/trainer_state.json")["losses"].items()}


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, settings: "Settings", *,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train (or resume) run ``cfg.run_id``; returns the final model's URI and the loss curve.
    ``on_step(step, loss)`` is called after every step (tests use it to simulate a crash)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from g2i_core.storage import Storage

    # 1. Storage, data and model
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    storage = Storage.from_settings(settings, root=cfg.storage_root or None)
    run_uri = storage.uri("models", cfg.run_id)
    if int(os.environ.get("RANK", "0")) == 0:
        # A retried run rewrites the final files: until it commits again, the run is not a finished model.
        storage.delete(f"{run_uri}/{COMMIT_FILE}")
    mcfg = model_config_for(cfg, settings)
    records = load_records(storage.pinned(cfg.graph_run_id), nodes_table=cfg.nodes_table, images_table=cfg.images_table,
                           neighbours_table=cfg.neighbours_table, max_neighbours=cfg.max_neighbours, split=cfg.split)
    if not records:
        raise ValueError(f"no training nodes: {cfg.nodes_table}/{cfg.images_table} under {storage.root} have no "
                         f"node with split={cfg.split!r} and an 'ok' image")
    torch.manual_seed(cfg.seed)  # model init
    model = build_model(mcfg, variant=cfg.variant or None, torch_dtype=parse_dtype(cfg.torch_dtype))
    model.text_cache_size = 200_000  # the text encoder is frozen: encode each distinct text once
    model.image_cache_size = 200_000  # likewise a frozen image encoder (sd15's CLIP ViT-L), per image key
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    alphas_cumprod = make_noise_scheduler(mcfg).alphas_cumprod

    # 2. Resume from the newest complete checkpoint
    losses: dict[int, float] = {}
    start = 0
    done = list_checkpoints(storage, run_uri) if cfg.resume else []
    if done:
        start = done[-1]
        losses = load_checkpoint(storage, run_uri, start, model, opt)
        log.info("resuming %s from checkpoint-%d", cfg.run_id, start)

    # 3. Accelerate (CPU, one GPU or many; mixed precision on GPU)
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    loss_module, opt = accelerator.prepare(DiffusionLoss(model), opt)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    alphas_cumprod = alphas_cumprod.to(device)
    uncond_ids, uncond_att = model.tokenize([""])
    maker = BatchMaker(model, records, ImageCache(storage), cfg.batch_size, cfg.seed, rank, world, cfg.random_flip)
    prefetch = Prefetcher(maker, start + 1, cfg.steps, depth=cfg.prefetch, workers=1)

    # 4. Loop
    log.info("training %s: %d nodes, preset %s, graph_mode %s, %d trainable params, steps %d..%d",
             cfg.run_id, len(records), mcfg.preset, mcfg.graph_mode, sum(p.numel() for p in params), start + 1,
             cfg.steps)
    loss_module.train()
    bar = tqdm(total=cfg.steps, initial=start, disable=not sys.stderr.isatty(), desc=f"train {cfg.run_id}")
    t0, t_log, window = time.perf_counter(), time.perf_counter(), []
    try:
        for step in range(start + 1, cfg.steps + 1):
            batch = prefetch.get(step)
            torch.manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)  # noise, t, dropout, module dropout
            B = batch["pixels"].shape[0]
            x0 = model.encode_images(batch["pixels"].to(device))
            noise = torch.randn(x0.shape).to(device)
            timesteps = torch.randint(0, mcfg.num_train_timesteps, (B,)).to(device)
            drop_text, drop_graph = dropout_masks(torch.rand(B), cfg.p_drop_text, cfg.p_drop_graph, cfg.p_drop_both)
            ids = torch.where(drop_text[:, None], uncond_ids, batch["ids"]).to(device)
            att = torch.where(drop_text[:, None], uncond_att, batch["att"]).to(device)
            graph = batch["graph"].to(device) if batch["graph"] is not None else None

            lr = learning_rate(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            with accelerator.autocast():
                loss = loss_module(x0, noise, timesteps, alphas_cumprod, ids, att, graph, drop_graph.to(device))
            accelerator.backward(loss)
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)

            value = accelerator.reduce(loss.detach(), reduction="mean").item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss is {value} at step {step}; lower lr or check the inputs")
            losses[step] = value
            window.append(value)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                dt = time.perf_counter() - t_log
                log.info("step %d/%d loss %.4f (mean of last %d) lr %.2e %.2f steps/s %.1f img/s", step, cfg.steps,
                         sum(window) / len(window), len(window), lr, len(window) / dt,
                         len(window) * cfg.batch_size / dt)
                bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
                t_log, window = time.perf_counter(), []
            if step % cfg.checkpoint_every == 0 and step < cfg.steps and accelerator.is_main_process:
                save_checkpoint(storage, run_uri, step, model, opt.optimizer if hasattr(opt, "optimizer") else opt,
                                losses, cfg)
                for old in list_checkpoints(storage, run_uri)[:-cfg.checkpoints_keep]:
                    storage.delete_prefix(f"{run_uri}/checkpoint-{old}")
            if on_step is not None:
                on_step(step, value)
    finally:
        prefetch.close()
        bar.close()
    seconds = time.perf_counter() - t0
    ran = cfg.steps - start

    # 5. Final model (main process only), then metrics
    if accelerator.is_main_process:
        with tempfile.TemporaryDirectory(prefix="g2i-model-") as tmp:
            accelerator.unwrap_model(loss_module).model.save_pretrained(tmp)
            for name in ("model.safetensors", "config.json"):
                storage.put_bytes(f"{run_uri}/{name}", (Path(tmp) / name).read_bytes())
        storage.put_json(f"{run_uri}/train_config.json", dataclasses.asdict(cfg))
        storage.put_json(f"{run_uri}/metrics.json", {
            "losses": {str(k): v for k, v in sorted(losses.items())}, "steps": cfg.steps, "resumed_from": start,
            "steps_per_s": ran / seconds if ran else 0.0,
            "images_per_s": ran * cfg.batch_size / seconds if ran else 0.0,
            "train_seconds": seconds, "device": str(device), "processes": world, "mixed_precision": mp,
            "model_config": json.loads(mcfg.to_json())})
        graph = storage.pinned(cfg.graph_run_id).manifest(cfg.neighbours_table)
        # The commit marker, written last: a model is finished exactly when this file exists.
        storage.put_json(f"{run_uri}/{COMMIT_FILE}", {
            "run_id": cfg.run_id, "files": [WEIGHTS_FILE, "config.json", "train_config.json", "metrics.json"],
            "graph_run_id": graph["run_id"], "steps": cfg.steps,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    accelerator.wait_for_everyone()
    return TrainResult(run_uri, dict(sorted(losses.items())), ran / seconds if ran else 0.0,
                       ran * cfg.batch_size / seconds if ran else 0.0, seconds, start)
