"""Batch generation: images for a node set from a trained model and the neighbour table.

Node sets: a split of the nodes table (``split="test"``), an explicit id list, or the cover backfill —
every node without a usable real image. The set is cut into ``num_shards`` shards by a stable hash of
the node id, so an orchestrator can fan shards out over GPUs; one call runs one shard.

Object layout under the storage root::

    generations/<run_id>/images/<sha[:2]>/<sha>.png               content-addressed images
    generations/<run_id>/_progress/shard-<i>-of-<n>/<batch>.json  rows of one finished batch
    generations/<run_id>/manifest/                                 one published run per shard:
        run=shard-<i>-of-<n>/part-*.parquet, _manifests/shard-<i>-of-<n>.json

A batch's images are written first, then its progress object (one atomic PUT), so a killed run
loses at most the batch in flight. A shard's manifest is published only when every request of the
shard has a progress row. A rerun — or a second attempt of the same shard — skips a published shard
outright and otherwise generates only the requests without a progress row. A request is identified
by (node, seed, model, scales, steps, mixing, neighbour table), so changing any setting under the
same run id generates new images instead of reusing old ones. ``read_manifest`` unions the published
shards (it is what ``g2i evaluate`` reads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("node_id", "image_key", "model_id", "seed", "text_scale", "graph_scale", "steps", "created_at",
                    "request_id", "shard", "mix", "neighbour_ids")


@dataclass(frozen=True)
class GenerateConfig:
    run_id: str  # generations/<run_id>/
    model_uri: str  # models/<model run> folder written by the model's save_pretrained (file://, s3:// or local)
    # node set: exactly one of split / node_ids / backfill
    split: str = ""
    node_ids: tuple[str, ...] = ()
    backfill: bool = False
    shard: int = 0
    num_shards: int = 1
    batch_size: int = 8
    seeds: tuple[int, ...] = (0,)
    # None = the model preset's (``model.config.sampling_defaults``: tiny 3/4, sd15 7.5/1.5, sd15-paper
    # 7.5/7.5), filled in by ``generate`` once the model is loaded; run_shard alone falls back to 7.5/1.5.
    text_scale: float | None = None
    graph_scale: float | None = None
    steps: int = 50
    # style mixing: extra graph conditions, each the neighbour set of another node, with its own scale
    mix: tuple[tuple[str, float], ...] = ()
    nodes_table: str = "graph_nodes"
    images_table: str = "node_images"
    neighbours_table: str = "neighbours"
    max_neighbours: int = 5
    limit: int = 0  # keep only the first N nodes of the set (0 = all); applied before sharding
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        chosen = [name for name, on in (("split", bool(self.split)), ("node_ids", bool(self.node_ids)),
                                        ("backfill", self.backfill)) if on]
        if len(chosen) != 1:
            raise ValueError(f"choose exactly one node set (split, node_ids or backfill), got {chosen or 'none'}")
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard must be in [0, num_shards={self.num_shards}), got {self.shard}")
        if self.batch_size < 1 or self.steps < 1 or not self.seeds:
            raise ValueError(f"batch_size and steps must be >= 1 and seeds non-empty, got batch_size="
                             f"{self.batch_size}, steps={self.steps}, seeds={self.seeds}")
        if not self.run_id or "/" in self.run_id:
            raise ValueError(f"run_id must be a non-empty name without '/', got {self.run_id!r}")

    def with_scales(self, defaults: dict[str, float]) -> "GenerateConfig":
        """This config with the scales it leaves None taken from ``defaults`` (text_scale, graph_scale)."""
        return replace(self, text_scale=defaults["text_scale"] if self.text_scale is None else self.text_scale,
                       graph_scale=defaults["graph_scale"] if self.graph_scale is None else self.graph_scale)

    @property
    def text_only(self) -> bool:
        """Graph guidance 0 and no mixing: the guidance formula's graph term is 0, so the images are the
        model's text-only ones (ε(∅,∅) + s_T·[ε(c_T,∅_G) − ε(∅,∅)]) and the graph branch is skipped."""
        return self.graph_scale == 0 and not self.mix

    @property
    def shard_name(self) -> str:
        return f"shard-{self.shard:04d}-of-{self.num_shards:04d}"


@dataclass(frozen=True)
class Request:
    node_id: str
    seed: int
    request_id: str


# A generator turns a batch into images: (prompts, graphs per prompt (None = text only), per-request
# seeds, config) -> list of (H, W, 3) uint8 arrays. ``PipelineGenerator`` is the real one.
Generator = Callable[[list[str], "list[list[Any]] | None", list[int], GenerateConfig], list[np.ndarray]]


# ---- node sets and shards -----------------------------------------------------------------------------
def shard_of(node_id: str, num_shards: int) -> int:
    """Stable shard of a node: the same on every machine and Python process (no ``hash()`` salt)."""
    return int.from_bytes(hashlib.sha1(node_id.encode()).digest()[:8], "big") % num_shards


def backfill_nodes(nodes: "pa.Table", node_images: "pa.Table") -> list[str]:
    """Nodes with no usable real image: ``has_real_image`` false (e.g. Goodreads ``/nophoto/`` covers)
    or no ``node_images`` row with status 'ok' (download failed, corrupt, too large)."""
    ok = {r["node_id"] for r in node_images.select(["node_id", "status"]).to_pylist() if r["status"] == "ok"}
    cols = nodes.column_names
    out = []
    for r in nodes.select([c for c in ("node_id", "has_real_image") if c in cols]).to_pylist():
        if not r.get("has_real_image", True) or r["node_id"] not in ok:
            out.append(r["node_id"])
    return sorted(set(out))


def select_nodes(storage: "Storage", cfg: GenerateConfig) -> list[str]:
    """The whole node set (all shards), sorted, before sharding."""
    from g2i_core.model.data import resolve_nodes_table

    if cfg.node_ids:
        nodes = sorted(set(cfg.node_ids))
    else:
        table = storage.read_table(resolve_nodes_table(storage, cfg.nodes_table))
        if cfg.backfill:
            nodes = backfill_nodes(table, storage.read_table(cfg.images_table, columns=["node_id", "status"]))
        else:
            if "split" not in table.column_names:
                raise ValueError(f"nodes table has no 'split' column (columns: {table.column_names}); "
                                 "pass node ids or --backfill instead")
            nodes = sorted({r["node_id"] for r in table.select(["node_id", "split"]).to_pylist()
                            if r["split"] == cfg.split})
            if not nodes:
                raise ValueError(f"no nodes with split={cfg.split!r} in the nodes table")
    return nodes[: cfg.limit] if cfg.limit else nodes


def shard_nodes(nodes: Sequence[str], shard: int, num_shards: int) -> list[str]:
    return [n for n in nodes if shard_of(n, num_shards) == shard]


# ---- requests -------------------------------------------------------------------------------------------
def model_id_of(model_uri: str) -> str:
    return model_uri.rstrip("/").rsplit("/", 1)[-1]


def request_id(node_id: str, seed: int, cfg: GenerateConfig) -> str:
    key = {"node": node_id, "seed": seed, "model": cfg.model_uri, "text_scale": cfg.text_scale,
           "graph_scale": cfg.graph_scale, "steps": cfg.steps,
           "mix": [list(m) for m in cfg.mix],
           "neighbours": cfg.neighbours_table, "k": cfg.max_neighbours, "extra": cfg.extra}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def node_seed(node_id: str, seed: int) -> int:
    """The latent-noise seed of one (node, seed): independent of batch composition and shard."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{node_id}".encode()).digest()[:8], "big") >> 1


def requests_for(nodes: Sequence[str], cfg: GenerateConfig) -> list[Request]:
    return [Request(n, s, request_id(n, s, cfg)) for n in nodes for s in cfg.seeds]


# ---- progress and manifest --------------------------------------------------------------------------------
def _progress_prefix(storage: "Storage", cfg: GenerateConfig) -> str:
    return storage.uri("generations", cfg.run_id, "_progress", cfg.shard_name)


def _manifest_name(run_id: str) -> str:
    return f"generations/{run_id}/manifest"


def done_rows(storage: "Storage", cfg: GenerateConfig) -> dict[str, dict]:
    """Rows of finished batches of this shard, by request id (the first writer wins on a race)."""
    rows: dict[str, dict] = {}
    for uri in storage.list(_progress_prefix(storage, cfg)):
        if uri.endswith(".json"):
            for row in storage.get_json(uri):
                rows.setdefault(row["request_id"], row)
    return rows


def manifest_table(rows: list[dict]) -> "pa.Table":
    import pyarrow as pa

    schema = pa.schema([("node_id", pa.string()), ("image_key", pa.string()), ("model_id", pa.string()),
                        ("seed", pa.int64()), ("text_scale", pa.float64()), ("graph_scale", pa.float64()),
                        ("steps", pa.int64()), ("created_at", pa.string()), ("request_id", pa.string()),
                        ("shard", pa.string()), ("mix", pa.string()), ("neighbour_ids", pa.list_(pa.string()))])
    return pa.Table.from_pylist([{c: r[c] for c in MANIFEST_COLUMNS} for r in rows], schema=schema)


def read_manifest(storage: "Storage", run_id: str, *, require_complete: bool = True) -> "pa.Table":
    """Union of the published shard manifests of a generation run (one row per request)."""
    import pyarrow as pa

    name = _manifest_name(run_id)
    shards = sorted(u.rsplit("/", 1)[-1][: -len(".json")] for u in storage.list(storage.uri(name, "_manifests"))
                    if u.endswith(".json"))
    if not shards:
        raise FileNotFoundError(f"generation run {run_id!r} has no published shard under {storage.uri(name)}")
    total = {int(s.rsplit("-of-", 1)[1]) for s in shards}
    if require_complete and (len(total) != 1 or len(shards) != total.pop()):
        raise ValueError(f"generation run {run_id!r} is incomplete: published shards {shards}")
    tables = [storage.read_table(name, run_id=s) for s in shards]
    table = pa.concat_tables(tables)
    if len(set(table.column("request_id").to_pylist())) != table.num_rows:
        raise ValueError(f"generation run {run_id!r} has duplicate requests across shards")
    return table


# ---- the run ------------------------------------------------------------------------------------------------
def _encode_png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _progress_bar(total: int, desc: str):
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img")
    return None


def run_shard(storage: "Storage", cfg: GenerateConfig, generator: Generator,
              load_graphs: Callable[[list[str]], Any] | None = None) -> dict:
    """Generate one shard; returns a summary. ``load_graphs(node_ids)`` returns per node a list of
    graph conditions (first: the node's own neighbours, then the mixed graphs), or None for a
    text-only model; by default they come from the neighbour table through the model's data module."""
    from g2i_core.model.config import FALLBACK_SAMPLING

    cfg = cfg.with_scales(FALLBACK_SAMPLING)
    cfg.validate()
    name = _manifest_name(cfg.run_id)
    # 1. A published shard is final: a second attempt does nothing.
    requests = requests_for(shard_nodes(select_nodes(storage, cfg), cfg.shard, cfg.num_shards), cfg)
    wanted = {r.request_id for r in requests}
    if storage.is_published(name, cfg.shard_name):
        published = set(storage.read_table(name, run_id=cfg.shard_name, columns=["request_id"])
                        .column("request_id").to_pylist())
        if published != wanted:
            raise ValueError(f"{cfg.run_id} {cfg.shard_name} is already published with other settings or nodes "
                             f"({len(published)} requests, {len(published & wanted)} matching); use a new run id")
        log.info("%s %s already published (%d rows); skipping", cfg.run_id, cfg.shard_name, len(published))
        return {"shard": cfg.shard_name, "published": True, "skipped": True, "rows": len(published), "generated": 0}
    # 2. This shard's requests, minus those a previous attempt finished.
    done = {k: v for k, v in done_rows(storage, cfg).items() if k in wanted}
    pending = [r for r in requests if r.request_id not in done]
    log.info("%s %s: %d requests, %d done, %d to generate", cfg.run_id, cfg.shard_name, len(requests), len(done),
             len(pending))
    # 3. Batches: images first, then the batch's progress object (the batch's commit point).
    bar, generated, started = _progress_bar(len(pending), cfg.shard_name), 0, time.time()
    model_id = model_id_of(cfg.model_uri)
    for start in range(0, len(pending), cfg.batch_size):
        batch = pending[start:start + cfg.batch_size]
        nodes = [r.node_id for r in batch]
        texts, graphs, neighbour_ids = load_graphs(nodes) if load_graphs else ([""] * len(nodes), None,
                                                                               [[] for _ in nodes])
        images = generator(texts, graphs, [node_seed(r.node_id, r.seed) for r in batch], cfg)
        if len(images) != len(batch):
            raise RuntimeError(f"generator returned {len(images)} images for a batch of {len(batch)}")
        rows = []
        for r, img, nbrs in zip(batch, images, neighbour_ids, strict=True):
            ref = storage.put_content_addressed(_encode_png(img), prefix=f"generations/{cfg.run_id}/images",
                                                ext="png", content_type="image/png")
            rows.append({"node_id": r.node_id, "image_key": ref.key, "model_id": model_id, "seed": r.seed,
                         "text_scale": cfg.text_scale, "graph_scale": cfg.graph_scale if graphs is not None else 0.0,
                         "steps": cfg.steps, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "request_id": r.request_id, "shard": cfg.shard_name,
                         "mix": json.dumps([list(m) for m in cfg.mix]), "neighbour_ids": list(nbrs)})
        batch_key = hashlib.sha256("".join(r.request_id for r in batch).encode()).hexdigest()[:16]
        storage.put_json(f"{_progress_prefix(storage, cfg)}/{batch_key}.json", rows)
        generated += len(batch)
        if bar:
            bar.update(len(batch))
    if bar:
        bar.close()
    # 4. Publish the shard manifest only when every request has a row.
    done = {k: v for k, v in done_rows(storage, cfg).items() if k in wanted}
    missing = wanted - set(done)
    if missing:
        raise RuntimeError(f"{cfg.shard_name}: {len(missing)} requests have no progress row after the run")
    rows = [done[r.request_id] for r in requests]
    storage.publish_table(name, manifest_table(rows), run_id=cfg.shard_name,
                          extra={"config": asdict(cfg), "model_id": model_id})
    seconds = time.time() - started
    return {"shard": cfg.shard_name, "published": True, "skipped": False, "rows": len(rows), "generated": generated,
            "seconds": round(seconds, 2), "images_per_s": round(generated / seconds, 3) if generated else None}


# ---- the real generator: the model's pipeline ----------------------------------------------------------------
class PipelineGenerator:
    """Wraps ``G2IPipeline`` so that each image's initial noise comes from its own (node, seed)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.uses_graph = pipe.model.config.uses_graph

    def __call__(self, prompts, graphs, seeds, cfg: GenerateConfig) -> list[np.ndarray]:
        import torch

        from g2i_core.model.config import sampling_defaults

        cfg = cfg.with_scales(sampling_defaults(self.pipe.model.config.preset))  # scales left open: the preset's

        pipe, orig = self.pipe, self.pipe.prepare_latents

        def per_node_latents(B, height, width, generator):  # one generator per image, stacked
            return torch.cat([orig(1, height, width, torch.Generator().manual_seed(s)) for s in seeds])

        pipe.prepare_latents = per_node_latents
        try:
            if graphs is None or not self.uses_graph:
                out = pipe(prompts, None, text_scale=cfg.text_scale, num_inference_steps=cfg.steps,
                           output_type="pt")
            else:
                scales = [cfg.graph_scale] + [s for _, s in cfg.mix]
                out = pipe(prompts, graphs, text_scale=cfg.text_scale,
                           graph_scale=scales if cfg.mix else cfg.graph_scale, num_inference_steps=cfg.steps,
                           output_type="pt")
        finally:
            del pipe.prepare_latents  # back to the class method
        return list((out.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))


def graph_loader(storage: "Storage", cfg: GenerateConfig, uses_graph: bool):
    """``load_graphs`` for ``run_shard`` reading the nodes, images and neighbour tables once."""
    from g2i_core.model.data import ImageCache, condition_of, load_records

    records = {r.node_id: r for r in load_records(storage, nodes_table=cfg.nodes_table,
                                                  images_table=cfg.images_table,
                                                  neighbours_table=cfg.neighbours_table,
                                                  max_neighbours=cfg.max_neighbours, require_image=False)}
    missing = [n for n, _ in cfg.mix if n not in records]
    if missing:
        raise ValueError(f"--mix names nodes not in the nodes table: {missing}")
    cache = ImageCache(storage)

    def load(node_ids: list[str]):
        unknown = [n for n in node_ids if n not in records]
        if unknown:
            raise KeyError(f"{len(unknown)} nodes are not in the nodes table, e.g. {unknown[:3]}")
        texts = [records[n].text for n in node_ids]
        nbr_ids = [records[n].neighbour_ids for n in node_ids]
        if not uses_graph:  # no neighbours were used: a text-only generation records none
            return texts, None, [[] for _ in node_ids] if cfg.text_only else nbr_ids
        mixed = [condition_of(records[m], cache).neighbours for m, _ in cfg.mix]
        graphs = [[condition_of(records[n], cache).neighbours, *mixed] for n in node_ids]
        return texts, graphs, nbr_ids

    return load


def generate(storage: "Storage", cfg: GenerateConfig, settings=None, device: str = "cpu", *, variant: str = "",
             torch_dtype: str = "") -> dict:
    """Load the model and run one shard of ``cfg`` (the entry point behind ``g2i generate``). Scales
    ``cfg`` leaves None are the model preset's; ``variant``/``torch_dtype`` as in G2IModel.from_pretrained."""
    from g2i_core.model import G2IPipeline
    from g2i_core.model.baselines import own_pipeline
    from g2i_core.model.config import sampling_defaults

    pipe = own_pipeline(G2IPipeline.from_pretrained(cfg.model_uri, settings=settings, device=device,
                                                    variant=variant or None, torch_dtype=torch_dtype or None))
    # the preset's guidance where cfg leaves it open; never more neighbours than the model takes
    cfg = replace(cfg.with_scales(sampling_defaults(pipe.model.config.preset)),
                  max_neighbours=min(cfg.max_neighbours, pipe.model.config.max_neighbours))
    gen = PipelineGenerator(pipe)
    return run_shard(storage, cfg, gen, graph_loader(storage, cfg, gen.uses_graph and not cfg.text_only))
