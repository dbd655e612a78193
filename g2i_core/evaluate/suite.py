"""``g2i evaluate --suite paper``: the paper's Table 1 and ablations on our data, in one command.

Graph guidance s_G is chosen first, on the val split (the lowest FID of ours among
``graph_scale_candidates``). Every method is trained (tiny preset, through the model's ``train``),
generates the test nodes with a fixed generator seed (through ``g2i_core.generate``), and is scored
by the offline evaluator (plus CLIP/DINOv2 when configured). Headline methods run with several training seeds,
so each number carries a seed spread. Everything is stored under the suite's run id and reused on a rerun: trained
models, published generations; a killed suite resumes where it stopped.

    methods      graph condition                           neighbours table
    text_only    none (text-only fine-tune)                -
    random       Graph-QFormer (image + text tokens)       neighbours_random
    ppr          Graph-QFormer                             neighbours_ppr
    semantic     Graph-QFormer                             neighbours_semantic
    semantic_ppr Graph-QFormer  (ours)                     neighbours_semantic_ppr
    no_qformer   tokens appended without the QFormer       neighbours_semantic_ppr
    images_only  QFormer over neighbour images only        neighbours_semantic_ppr
    texts_only   QFormer over neighbour texts only         neighbours_semantic_ppr
    gnn_sage     GraphSAGE over the neighbour star (no QFormer)  neighbours_semantic_ppr
    gnn_gat      GAT over the neighbour star (no QFormer)        neighbours_semantic_ppr
    instructpix2pix  baseline: strongest image neighbour concatenated to the latents, + text
    controlnet       baseline: strongest image neighbour through a ControlNet, + text

The two baselines take the first neighbour with an image of neighbours_semantic_ppr (the same ranking as
ours) and run with every training seed, like the headline methods. InstructPix2Pix's image guidance
s_I is chosen on the val split with its own first seed (the criterion ours' s_G is chosen by);
ControlNet samples with its conditioning scale at diffusers' default 1.0 and text guidance s_T.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from g2i_core.model.config import TINY16_OVERRIDES

if TYPE_CHECKING:
    from g2i_core.config import Settings
    from g2i_core.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    name: str
    graph_mode: str
    strategy: str | None  # neighbours_<strategy>; None = no graph
    description: str
    headline: bool  # trained with every seed (Table 1); ablations use ``ablation_seeds``
    # The graph_scale its generations use: None = the suite's s_G (chosen with ours on val); "val" = its
    # own, chosen on val among ``image_scale_candidates`` (InstructPix2Pix's s_I); a number = fixed.
    scale: float | str | None = None

    @property
    def uses_suite_graph_scale(self) -> bool:
        return self.strategy is not None and self.scale is None


PAPER_METHODS = (
    Method("text_only", "none", None, "text-only fine-tune (no graph)", True),
    Method("random", "qformer", "random", "Graph-QFormer, random neighbours", True),
    Method("ppr", "qformer", "ppr", "Graph-QFormer, PPR-only neighbours", False),
    Method("semantic", "qformer", "semantic", "Graph-QFormer, semantic-only neighbours", False),
    Method("semantic_ppr", "qformer", "semantic_ppr", "Graph-QFormer, semantic-PPR neighbours (ours)", True),
    Method("no_qformer", "no_qformer", "semantic_ppr", "ablation: graph tokens without the QFormer", False),
    Method("images_only", "images_only", "semantic_ppr", "ablation: neighbour images only", False),
    Method("texts_only", "texts_only", "semantic_ppr", "ablation: neighbour texts only", False),
    Method("gnn_sage", "gnn_sage", "semantic_ppr", "ablation: GraphSAGE aggregator instead of the QFormer", False),
    Method("gnn_gat", "gnn_gat", "semantic_ppr", "ablation: GAT aggregator instead of the QFormer", False),
    Method("instructpix2pix", "instructpix2pix", "semantic_ppr",
           "baseline: InstructPix2Pix, strongest image neighbour + text", True, scale="val"),
    Method("controlnet", "controlnet", "semantic_ppr", "baseline: ControlNet, strongest image neighbour + text",
           True, scale=1.0),
)
BASELINES = ("instructpix2pix", "controlnet")

# A 16-px variant of the tiny preset: the suite trains ~10 models, on a CPU if need be. The same
# settings are the ``tiny16`` preset of ``g2i train`` (what `make demo` trains).
TINY16 = TINY16_OVERRIDES


@dataclass(frozen=True)
class SuiteConfig:
    run_id: str = "paper"
    methods: tuple[str, ...] = tuple(m.name for m in PAPER_METHODS)
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds of the headline methods
    ablation_seeds: tuple[int, ...] = (0,)
    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # TrainConfig.lr_schedule; "constant" reproduces the suites before it existed
    model_overrides: dict = field(default_factory=lambda: dict(TINY16))
    gen_seed: int = 0  # fixed generator seed for every method
    gen_steps: int = 10
    text_scale: float = 3.0
    # s_G: chosen on the val split among the candidates (``select_graph_scale``); graph_scale is only
    # the fallback for samples without a val split. Stronger graph guidance buys paired accuracy at the
    # price of diversity (FID): the val curve in docs/evaluation.md (sample benchmark results).
    graph_scale: float = 4.0
    graph_scale_candidates: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    # InstructPix2Pix's image guidance s_I, chosen on val like s_G (diffusers' default is 1.5)
    image_scale_candidates: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    max_test_nodes: int = 0  # 0 = every test node with a real image
    grid_nodes: int = 6
    guidance_text_scales: tuple[float, ...] = (1.0, 3.0, 6.0)
    guidance_graph_scales: tuple[float, ...] = (0.0, 4.0, 8.0)
    encoders: tuple[str, ...] = ()  # "clip", "dinov2" when their local paths are configured

    def validate(self) -> None:
        known = {m.name for m in PAPER_METHODS}
        unknown = set(self.methods) - known
        if unknown:
            raise ValueError(f"unknown suite methods {sorted(unknown)}; choose from {sorted(known)}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")


def _decode(storage: "Storage", key: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(storage.get_bytes(storage.uri(key)))) as im:
        return np.asarray(im.convert("RGB"))


def load_ground_truth(storage: "Storage", nodes_table: str = "graph_nodes", images_table: str = "node_images",
                      split: str = "test"):
    """(real images by node, labels by node, label source, ``split`` node ids) from the published tables."""
    from g2i_core.model.data import resolve_nodes_table

    nodes = storage.read_table(resolve_nodes_table(storage, nodes_table)).to_pylist()
    if not nodes or "community" not in nodes[0]:
        raise ValueError("the suite needs a 'community' column in the nodes table (the sample benchmark's "
                         "ground truth); build it with `g2i evaluate --prepare-sample DIR`")
    images = {r["node_id"]: r["image_key"] for r in storage.read_table(images_table).to_pylist()
              if r["status"] == "ok"}
    real = {n: _decode(storage, k) for n, k in sorted(images.items())}
    labels = {r["node_id"]: r["community"] for r in nodes}
    chosen = sorted(r["node_id"] for r in nodes if r.get("split") == split and r["node_id"] in real)
    return real, labels, "sample ground-truth communities (graph_nodes.community)", chosen


def select_graph_scale(storage: "Storage", settings: "Settings", cfg: SuiteConfig, m: Method, seed: int,
                       model_uri: str, val: list[str], real: dict, labels: dict, space, resolution: int,
                       candidates: tuple[float, ...] | None = None) -> dict:
    """s_G with the lowest FID (style space) on the val nodes (ties: the smaller scale), and every
    candidate's offline metrics there. The test split is never looked at.

    FID, because it is the metric guidance can overshoot: the paired metrics keep rising with s_G while
    the generated set loses diversity (as classifier-free guidance is tuned for FID in diffusion work)."""
    from g2i_core.evaluate.runner import evaluate_one

    scores = {}
    for g in cfg.graph_scale_candidates if candidates is None else candidates:
        gen = generate_method(storage, settings, replace(cfg, graph_scale=g), m, seed, model_uri, val)
        scores[g] = evaluate_one(gen, real, labels, space, resolution=resolution)
    best = min(scores, key=lambda g: (scores[g]["style_fid"]["mean"], g))
    log.info("s_G %.1f chosen on %d val nodes (FID by s_G: %s)", best, len(val),
             ", ".join(f"{g}={v['style_fid']['mean']:.2f}" for g, v in scores.items()))
    return {"method": m.name, "seed": seed, "nodes": len(val), "criterion": "style_fid", "chosen": best,
            "metrics": {str(g): v for g, v in scores.items()}}


def _model_exists(storage: "Storage", run_id: str) -> bool:
    return storage.exists(storage.uri("models", run_id, "model.safetensors"))


def train_method(storage: "Storage", settings: "Settings", cfg: SuiteConfig, m: Method, seed: int) -> str:
    from g2i_core.model.train import TrainConfig, train

    # the model run id names its training settings, so a changed suite never reuses an older model
    settings_key = [m.graph_mode, m.strategy, cfg.steps, cfg.batch_size, cfg.lr, cfg.model_overrides]
    if cfg.lr_schedule != "constant":  # constant-lr models trained before the schedule existed keep their ids
        settings_key.append(cfg.lr_schedule)
    key = json.dumps(settings_key, sort_keys=True)
    run = f"{cfg.run_id}-{m.name}-s{seed}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    if not _model_exists(storage, run):
        tc = TrainConfig(run_id=run, preset="tiny", graph_mode=m.graph_mode, storage_root=storage.root,
                         neighbours_table=f"neighbours_{m.strategy or 'semantic_ppr'}", split="train",
                         steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, lr_warmup_steps=max(cfg.steps // 20, 1),
                         lr_schedule=cfg.lr_schedule,
                         seed=seed, p_drop_text=0.1, p_drop_graph=0.1, p_drop_both=0.1,
                         checkpoint_every=max(cfg.steps // 2, 1), checkpoints_keep=1, log_every=max(cfg.steps // 4, 1),
                         model_overrides=dict(cfg.model_overrides))
        result = train(tc, settings.replace(storage_root=storage.root))
        log.info("trained %s in %.0fs (%.2f steps/s), final loss %.4f", run, result.train_seconds,
                 result.steps_per_s, list(result.losses.values())[-1])
    return storage.uri("models", run)


def generation_run_id(cfg: SuiteConfig, m: Method, seed: int, nodes: list[str]) -> str:
    # the generation run id names its settings, so changed settings never meet an older published run
    settings_key = json.dumps([cfg.gen_seed, cfg.text_scale, cfg.graph_scale, cfg.gen_steps, nodes])
    return f"{cfg.run_id}-{m.name}-s{seed}-{hashlib.sha256(settings_key.encode()).hexdigest()[:8]}"


def generate_method(storage: "Storage", settings: "Settings", cfg: SuiteConfig, m: Method, seed: int,
                    model_uri: str, test: list[str]) -> dict[str, np.ndarray]:
    from g2i_core.generate import GenerateConfig, generate, read_manifest

    gcfg = GenerateConfig(run_id=generation_run_id(cfg, m, seed, test), model_uri=model_uri, node_ids=tuple(test),
                          batch_size=32, seeds=(cfg.gen_seed,), text_scale=cfg.text_scale, graph_scale=cfg.graph_scale,
                          steps=cfg.gen_steps,
                          neighbours_table=f"neighbours_{m.strategy or 'semantic_ppr'}")
    summary = generate(storage, gcfg, settings=settings.replace(storage_root=storage.root))
    if summary.get("generated"):  # timed here; kept for the cost table of later, reusing calls
        storage.put_json(_cost_uri(storage, cfg.run_id, gcfg.run_id),
                         {"images": summary["generated"], "seconds": summary["seconds"], "steps": cfg.gen_steps})
    rows = read_manifest(storage, gcfg.run_id).to_pylist()
    return {r["node_id"]: _decode(storage, r["image_key"]) for r in rows}


def _cost_uri(storage: "Storage", suite_run: str, generation_run: str) -> str:
    return storage.uri("reports", suite_run, "costs", f"{generation_run}.json")


def method_costs(storage: "Storage", suite_run: str, models: dict[tuple[str, int], str],
                 generation_runs: dict[str, str]) -> dict[str, dict]:
    """Per method: training s/step (the model's metrics.json, mean over seeds) and sampling s/image of the
    test generation (timed when it ran: batch 32, all guidance branches, PNG writes included). Times come
    from whichever process trained or generated, under its load: bench/bench_baselines.py compares
    the methods side by side."""
    out: dict[str, dict] = {}
    for (name, seed), uri in sorted(models.items()):
        entry = out.setdefault(name, {"train_s_per_step": [], "sample_s_per_image": []})
        metrics_uri = f"{uri}/metrics.json"
        metrics = storage.get_json(metrics_uri) if storage.exists(metrics_uri) else {}
        if metrics.get("steps_per_s"):
            entry["train_s_per_step"].append(1 / metrics["steps_per_s"])
        cost_uri = _cost_uri(storage, suite_run, generation_runs[f"{name}-s{seed}"])
        if storage.exists(cost_uri):
            gen = storage.get_json(cost_uri)
            entry["sample_s_per_image"].append(gen["seconds"] / gen["images"])
    for entry in out.values():
        for k in ("train_s_per_step", "sample_s_per_image"):
            v = entry[k]
            entry[k] = {"mean": float(np.mean(v)), "n": len(v)} if v else None
    return out


def guidance_grid(storage: "Storage", settings: "Settings", cfg: SuiteConfig, model_uri: str, node: str,
                  strategy: str) -> dict:
    """One node generated at every (text scale, graph scale) with the same seed."""
    from g2i_core.generate import GenerateConfig, PipelineGenerator, graph_loader, node_seed
    from g2i_core.model import G2IPipeline

    pipe = G2IPipeline.from_pretrained(model_uri, settings=settings.replace(storage_root=storage.root))
    gen = PipelineGenerator(pipe)
    images = {}
    for t in cfg.guidance_text_scales:
        for g in cfg.guidance_graph_scales:
            gcfg = GenerateConfig(run_id="grid", model_uri=model_uri, node_ids=(node,), text_scale=t, graph_scale=g,
                                  steps=cfg.gen_steps,
                                  neighbours_table=f"neighbours_{strategy}")
            texts, graphs, _ = graph_loader(storage, gcfg, gen.uses_graph)([node])
            images[(t, g)] = gen(texts, graphs, [node_seed(node, cfg.gen_seed)], gcfg)[0]
    return {"node_id": node, "text_scales": list(cfg.guidance_text_scales),
            "graph_scales": list(cfg.guidance_graph_scales), "images": images}


def sample_grids(storage: "Storage", generated: dict, real: dict, test: list[str], n: int,
                 columns: list[str]) -> list[dict]:
    """Rows for the comparison grid (first training seed of each method), with ours' neighbours."""
    from g2i_core.model.data import load_records

    records = {r.node_id: r for r in load_records(storage, neighbours_table="neighbours_semantic_ppr",
                                                  node_ids=test[:n], require_image=False)}
    rows = []
    for node in test[:n]:
        rec = records[node]
        images = {"ground truth": real[node]}
        for c in columns[1:]:
            per_seed = generated.get(c)
            if per_seed:
                images[c] = per_seed[min(per_seed)][node]
        kept = [(k, t) for k, t in zip(rec.neighbour_ids, rec.neighbour_texts, strict=True) if k in real]
        rows.append({"node_id": node, "text": rec.text, "images": images, "neighbours": [real[k] for k, _ in kept],
                     "neighbour_titles": [t or "" for _, t in kept], "neighbour_ids": [k for k, _ in kept]})
    return rows


def run_suite(storage: "Storage", settings: "Settings", cfg: SuiteConfig) -> dict:
    """Train, generate and evaluate every method; publish reports/<run_id>/; return metrics.json."""
    from g2i_core.evaluate.report import publish_report, render_report
    from g2i_core.evaluate.runner import compare, evaluate_methods, fit_space

    cfg.validate()
    started = time.time()
    # 1. Ground truth and the offline evaluator, fitted on the training nodes' real images only.
    real, labels, label_source, test = load_ground_truth(storage)
    val = load_ground_truth(storage, split="val")[3]
    if cfg.max_test_nodes:
        test = test[: cfg.max_test_nodes]
    resolution = int(cfg.model_overrides.get("resolution", 32))
    space = fit_space(real, labels, resolution=resolution, exclude=set(test) | set(val))
    encoders = _load_encoders(settings, cfg.encoders)
    methods = [m for m in PAPER_METHODS if m.name in cfg.methods]
    # 2. Graph guidance chosen on the val split with the first seed of ours, for every graph method
    #    (always ours, so suites split over several processes by --methods agree on s_G).
    selection = None
    tuner = next(m for m in PAPER_METHODS if m.name == "semantic_ppr") \
        if any(m.uses_suite_graph_scale for m in methods) else None
    if cfg.graph_scale_candidates and tuner and len(val) >= 2:
        selection = select_graph_scale(storage, settings, cfg, tuner, cfg.seeds[0],
                                       train_method(storage, settings, cfg, tuner, cfg.seeds[0]), val, real, labels,
                                       space, resolution)
        cfg = replace(cfg, graph_scale=selection["chosen"])
    elif cfg.graph_scale_candidates and tuner:
        log.warning("no val split with >= 2 covers: s_G stays %.1f (rebuild the tables with --prepare-sample)",
                    cfg.graph_scale)
    # 3. Train and generate each method x seed (reused when already stored).
    generated: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    models: dict[tuple[str, int], str] = {}
    timings: dict[str, float] = {}
    own_scales: dict[str, dict] = {}  # methods that choose their own scale on val (InstructPix2Pix's s_I)

    def method_cfg(m: Method) -> SuiteConfig:
        """The suite config a method generates with: its graph_scale is the suite's s_G, its own, or fixed."""
        if m.scale is None:
            return cfg
        if m.scale != "val":
            return replace(cfg, graph_scale=float(m.scale))
        if m.name not in own_scales:
            seed0 = cfg.seeds[0]
            if cfg.image_scale_candidates and len(val) >= 2:
                own_scales[m.name] = select_graph_scale(
                    storage, settings, cfg, m, seed0, train_method(storage, settings, cfg, m, seed0), val, real,
                    labels, space, resolution, candidates=cfg.image_scale_candidates)
            else:
                own_scales[m.name] = {"method": m.name, "chosen": 1.5, "criterion": "diffusers' default"}
        return replace(cfg, graph_scale=own_scales[m.name]["chosen"])
    # Seed by seed over the headline methods first, then the ablations: a suite cut short still
    # leaves comparable methods behind (all stored runs are reused by the next invocation).
    order = [(m, s) for s in cfg.seeds for m in methods if m.headline]
    order += [(m, s) for m in methods if not m.headline for s in cfg.ablation_seeds]
    for m, seed in order:
        t0 = time.time()
        models[(m.name, seed)] = train_method(storage, settings, cfg, m, seed)
        generated.setdefault(m.name, {})[seed] = generate_method(storage, settings, method_cfg(m), m, seed,
                                                                 models[(m.name, seed)], test)
        timings[f"{m.name}-s{seed}"] = round(time.time() - t0, 1)
    # 4. Metrics, and the paper's two claims as checks.
    doc = evaluate_methods(generated, real, labels, space, encoders=encoders, resolution=resolution,
                           run_id=cfg.run_id, label_source=label_source,
                           descriptions={m.name: m.description for m in methods},
                           description=f"sample benchmark: {len(test)} test nodes, {len(real)} real images; "
                                       f"tiny preset at {resolution}px, {cfg.steps} training steps, generator "
                                       f"seed {cfg.gen_seed}, {cfg.gen_steps} DDIM steps, s_T={cfg.text_scale}, "
                                       f"s_G={cfg.graph_scale}"
                                       + (f" (chosen on {len(val)} val nodes)" if selection else ""))
    if {"semantic_ppr", "text_only"} <= generated.keys():
        doc["checks"].append(compare(doc, "semantic_ppr", "text_only", "graph-conditioned (semantic-PPR) beats "
                                     "text-only by more than the seed spread", strict=True))
    if {"semantic_ppr", "random"} <= generated.keys():
        doc["checks"].append(compare(doc, "semantic_ppr", "random", "semantic-PPR neighbours at least as good as "
                                     "random neighbours (within the seed spread)", strict=False))
    for b in BASELINES:  # the paper's Table 1 ordering against its image-conditioned baselines
        if {"semantic_ppr", b} <= generated.keys():
            doc["checks"].append(compare(doc, "semantic_ppr", b, f"ours (semantic-PPR) beats {b} by more than the "
                                         "seed spread", strict=True))
    doc["suite"] = {k: v for k, v in asdict(cfg).items() if k != "model_overrides"}
    doc["suite"]["model_overrides"] = {k: v for k, v in cfg.model_overrides.items() if not isinstance(v, dict)}
    doc["graph_scale_selection"] = selection
    doc["image_scale_selection"] = own_scales or None
    doc["models"] = {f"{m}-s{s}": uri for (m, s), uri in models.items()}
    doc["generation_runs"] = {f"{m.name}-s{s}": generation_run_id(method_cfg(m), m, s, test) for m, s in order}
    doc["timings_s"] = timings
    doc["costs"] = method_costs(storage, cfg.run_id, models, doc["generation_runs"])
    # 5. Report: grids and a guidance grid from our model.
    columns = ["ground truth"] + [c for c in ("text_only", "random", "semantic_ppr", *BASELINES) if c in generated]
    grids = sample_grids(storage, generated, real, test, cfg.grid_nodes, columns)
    guidance = []
    ours = next(((m, s) for (m, s) in models if m == "semantic_ppr"), None)
    if ours and cfg.guidance_text_scales and cfg.guidance_graph_scales:
        guidance.append(guidance_grid(storage, settings, cfg, models[ours], test[0], "semantic_ppr"))
    doc["suite_seconds"] = round(time.time() - started, 1)
    publish_report(storage, cfg.run_id, doc, render_report(doc, grids, columns, guidance))
    return doc


def _load_encoders(settings: "Settings", kinds: tuple[str, ...]) -> list[Any]:
    from g2i_core.evaluate.encoders import load_encoder
    from g2i_core.evaluate.inception import KIND as INCEPTION
    from g2i_core.evaluate.inception import InceptionFID, check_inception_path

    paths = {"clip": settings.clip_eval_path, "dinov2": settings.dinov2_path}
    unknown = set(kinds) - set(paths) - {INCEPTION}
    if unknown:
        raise ValueError(f"unknown encoders {sorted(unknown)}; choose from clip, dinov2, {INCEPTION}")
    # inception: the paper's FID, torchmetrics on local weights (G2I_INCEPTION_PATH; checked before any work)
    return [InceptionFID(str(check_inception_path(settings.inception_path))) if k == INCEPTION
            else load_encoder(k, paths[k]) for k in kinds]
