"""The embeddings cache: a rerun encodes only content whose hash is new; vectors stay exact."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from g2i_core import embed
from g2i_core.embed import EmbedConfig, embed_nodes, load_vectors


class CountingText:
    """A deterministic stand-in for MiniLM that records every text it is asked to encode."""

    calls: list[list[str]] = []

    def __init__(self, config):
        pass

    def __call__(self, texts):
        CountingText.calls.append(list(texts))
        out = np.zeros((len(texts), 6), np.float32)
        for i, t in enumerate(texts):
            out[i] = np.frombuffer(embed.content_hash("t", t).encode()[:24], np.uint8).reshape(6, 4).sum(1)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_all(self, texts, batch_size):
        return embed.encode_in_batches(lambda rows: self([texts[i] for i in rows]),
                                       np.array([len(t) for t in texts]), batch_size, label="counting")


def _publish(storage, texts: dict[str, str], run_id: str):
    storage.publish_table("graph_nodes", pa.table({"node_id": list(texts), "text": list(texts.values())}), run_id)


def test_delta_rerun_encodes_only_new_and_changed_texts(file_storage, monkeypatch):
    monkeypatch.setattr(embed, "MiniLmText", CountingText)
    CountingText.calls = []
    config = EmbedConfig(image_encoder="none", batch_size=3)
    texts = {f"n{i}": f"title number {i} " + "x" * (i % 5) for i in range(10)}
    texts["dup"] = texts["n1"]  # identical content is encoded once
    _publish(file_storage, texts, "g1")
    first = embed_nodes(file_storage, config, "e1")
    assert first["extra"]["stats"]["text"] == {"nodes": 11, "encoded": 10, "cached": 0}
    assert sum(len(c) for c in CountingText.calls) == 10
    # shortest first: batches hold texts of similar length
    flat = [t for c in CountingText.calls for t in c]
    assert [len(t) for t in flat] == sorted(len(t) for t in flat)
    ids1, vecs1, _ = load_vectors(file_storage, "text")
    before = dict(zip(ids1, vecs1, strict=True))

    # the nightly delta: one title changed, one node new, one removed; the rest must come from the cache
    CountingText.calls = []
    texts["n3"] = "a brand new title"
    texts["n99"] = "a new book"
    del texts["n7"]
    _publish(file_storage, texts, "g2")
    second = embed_nodes(file_storage, config, "e2")
    assert second["extra"]["stats"]["text"] == {"nodes": 11, "encoded": 2, "cached": 9}
    assert sorted(t for c in CountingText.calls for t in c) == ["a brand new title", "a new book"]
    ids2, vecs2, enc = load_vectors(file_storage, "text")
    after = dict(zip(ids2, vecs2, strict=True))
    assert enc == "minilm-l6-v2" and set(after) == set(texts)
    for nid in texts:
        if nid not in ("n3", "n99"):
            assert np.array_equal(after[nid], before[nid])  # copied, bit for bit
    assert np.allclose(after["n3"], CountingText(None)(["a brand new title"])[0])
    assert np.array_equal(after["dup"], after["n1"])
    schema = file_storage.read_table("embeddings").schema
    assert schema.field("vector").type == pa.list_(pa.float32())


def test_a_run_with_everything_cached_never_builds_the_model(file_storage, monkeypatch):
    monkeypatch.setattr(embed, "MiniLmText", CountingText)
    _publish(file_storage, {"a": "one", "b": "two"}, "g1")
    embed_nodes(file_storage, EmbedConfig(image_encoder="none"), "e1")

    def refuse(config):
        raise AssertionError("the model was loaded although every vector was cached")

    monkeypatch.setattr(embed, "MiniLmText", refuse)
    m = embed_nodes(file_storage, EmbedConfig(image_encoder="none"), "e2")
    assert m["extra"]["stats"]["text"] == {"nodes": 2, "encoded": 0, "cached": 2}


def test_auto_precision_uses_bf16_only_where_the_hardware_runs_it_natively():
    from g2i_core.embed import resolve_precision

    amx = "flags : fpu sse avx2 avx512f amx_bf16 amx_tile"
    plain = "flags : fpu sse avx2 fma"
    assert resolve_precision("auto", "cpu", amx) == "bf16"
    assert resolve_precision("auto", "cpu", "flags : avx512_bf16") == "bf16"
    assert resolve_precision("auto", "cpu", plain) == "fp32"  # emulated bf16 would be slower
    assert resolve_precision("auto", "cuda:0", plain) == "bf16"
    assert resolve_precision("fp32", "cpu", amx) == "fp32"
    assert resolve_precision("bf16", "cpu", plain) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        EmbedConfig(precision="int8").check()


def test_bf16_minilm_vectors_stay_faithful_to_fp32():
    """The real MiniLM: bf16 weights change each vector by less than 1e-3 in cosine, and the nearest
    neighbours among the titles do not move."""
    texts = [f"the {w} of the {v} {n}" for n, (w, v) in enumerate(
        [("garden", "night"), ("river", "kings"), ("ghost", "harbour"), ("secret", "stars"), ("last", "orchard"),
         ("silent", "winter"), ("lost", "library"), ("iron", "crown"), ("glass", "city"), ("red", "tide")] * 4)]
    fp32 = embed.MiniLmText(EmbedConfig(precision="fp32"))(texts)
    bf16 = embed.MiniLmText(EmbedConfig(precision="bf16"))(texts)
    assert fp32.dtype == bf16.dtype == np.float32 and fp32.shape == bf16.shape == (40, 384)
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    cosine = (fp32 * bf16).sum(1)
    assert cosine.min() > 0.999, cosine.min()
    nearest = lambda v: np.argsort(-(v @ v.T) + 2 * np.eye(len(v)), axis=1)[:, :3]  # noqa: E731
    assert (nearest(fp32) == nearest(bf16)).mean() > 0.95


def test_minilm_batches_by_token_count_and_matches_the_tokenizers_own_padding(monkeypatch):
    """encode_all tokenizes once, runs batches of near-equal token counts (shortest first) and returns the
    vectors in input order; its hand-built padding gives what the tokenizer's padding gives, truncation
    included."""
    import torch

    minilm = embed.MiniLmText(EmbedConfig(precision="fp32", max_tokens=12))
    # character length and token count disagree: long words are few tokens, short letters are many
    texts = ["a b c d e f g h", "understanding", "x", "the republic of letters and its enemies in winter",
             "q r s t", "extraordinary", "", "one two", "i j k l m n o p q r s t u v"]
    seen: list[list[int]] = []
    encode_tokens = minilm.encode_tokens

    def spy(tokens, rows):
        seen.append(tokens.lengths[rows].tolist())
        return encode_tokens(tokens, rows)

    monkeypatch.setattr(minilm, "encode_tokens", spy)
    got = minilm.encode_all(texts, batch_size=3)
    assert [len(b) for b in seen] == [3, 3, 3]
    assert [n for b in seen for n in b] == sorted(n for b in seen for n in b)  # token order, not characters
    assert max(n for b in seen for n in b) == 12  # truncated to max_tokens

    batch = minilm.tokenizer(texts, padding=True, truncation=True, max_length=12, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert got.shape == (len(texts), 384)
    assert np.allclose(got, want, atol=1e-5), np.abs(got - want).max()
    assert minilm([]).shape == (0, 384)
