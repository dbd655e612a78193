"""InstructG2I model: shapes, masking, Graph-QFormer, persistence, presets (tiny configs, seed 0)."""

from __future__ import annotations

import pytest
import torch  # noqa: F401 - setup always installs it; a missing torch must fail, not skip

pytestmark = pytest.mark.usefixtures("torch_one_thread")

from g2i_core.model.config import G2IConfig, sd15_config, tiny_config  # noqa: E402

B = 2



def small(**kw) -> G2IConfig:
    return tiny_config(resolution=16, max_neighbours=3, text_max_length=8, **kw)


@pytest.fixture(scope="module")
def models():
    """One tiny model per graph mode, built once (MiniLM loads from the installed package)."""
    from g2i_core.model.modeling import build_model

    out = {}
    for mode in ("qformer", "no_qformer", "images_only", "texts_only", "none"):
        torch.manual_seed(0)
        out[mode] = build_model(small(graph_mode=mode)).eval()
    return out


def colour(rgb):
    from PIL import Image

    return Image.new("RGB", (20, 20), rgb)


def neighbour_sets():
    from g2i_core.model.modeling import NeighbourSet

    return [NeighbourSet([colour((255, 0, 0)), colour((0, 0, 255))], ["red dragon", "blue castle"]),
            NeighbourSet([colour((0, 255, 0)), None], ["green", None])]


@pytest.mark.parametrize("mode,graph_len", [("qformer", 8), ("images_only", 8), ("texts_only", 8),
                                            ("no_qformer", 3 * 4 * 2), ("none", 0)])
def test_context_and_output_shapes(models, mode, graph_len):
    m = models[mode]
    ids, att = m.tokenize(["a dragon castle", "galaxy robot"])
    graph = m.prepare_graph(neighbour_sets()) if m.config.uses_graph else None
    ctx, mask = m.context(ids, att, graph)
    assert ctx.shape == (B, 8 + graph_len, 384) and mask.shape == (B, 8 + graph_len)
    eps = m(torch.randn(B, 3, 16, 16), torch.tensor([1, 999]), ctx, mask)
    assert eps.shape == (B, 3, 16, 16) and torch.isfinite(eps).all()


def test_graph_tokens_mask_follows_neighbours(models):
    m = models["no_qformer"]
    ids, att = m.tokenize(["a", "b"])
    _, mask = m.context(ids, att, m.prepare_graph(neighbour_sets()))
    graph_mask = mask[:, 8:].view(B, 2, 3, 4)  # (B, images|texts, N, tokens)
    assert graph_mask[0, :, :2].all() and not graph_mask[0, :, 2].any()  # 2 neighbours, 1 pad
    assert graph_mask[1, 0, 0].all() and not graph_mask[1, 0, 1:].any()  # image only on neighbour 0
    assert graph_mask[1, 1, 0].all() and not graph_mask[1, 1, 1:].any()  # text only on neighbour 0


@pytest.mark.parametrize("mode", ["qformer", "no_qformer", "images_only", "texts_only"])
def test_padded_neighbour_changes_nothing(models, mode):
    m = models[mode]
    _perturb_cross_attention(m)
    ids, att = m.tokenize(["a dragon castle", "galaxy robot"])
    graph = m.prepare_graph(neighbour_sets())
    noisy = m.prepare_graph(neighbour_sets())
    gen = torch.Generator().manual_seed(0)
    noisy.pixels[:, 2] = torch.rand(noisy.pixels[:, 2].shape, generator=gen)  # slot 2 is padding for both
    noisy.text_ids[:, 2] = torch.randint(1000, 2000, noisy.text_ids[:, 2].shape, generator=gen)
    noisy.text_attention[:, 2] = 1
    x, t = torch.randn(B, 3, 16, 16, generator=gen), torch.tensor([10, 500])
    with torch.no_grad():
        a = m(x, t, *m.context(ids, att, graph))
        b = m(x, t, *m.context(ids, att, noisy))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # ...while a real neighbour does change the prediction
    changed = m.prepare_graph(neighbour_sets())
    changed.pixels[:, 0] = 1 - changed.pixels[:, 0]
    changed.text_ids[:, 0] = noisy.text_ids[:, 2]
    with torch.no_grad():
        c = m(x, t, *m.context(ids, att, changed))
    assert (a - c).abs().max() > 1e-4


def _perturb_cross_attention(m):
    """Trained-like QFormer: the zero-initialised output projections get weights."""
    if m.qformer is None:
        return
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in m.qformer.cross.values():
            block.to_out.weight.copy_(torch.randn(block.to_out.weight.shape, generator=gen) * 0.05)


def test_qformer_without_graph_tokens_is_the_text_encoder():
    from g2i_core.model.modeling import build_model

    torch.manual_seed(0)
    m = build_model(tiny_config(qformer_num_layers=0, text_max_length=12)).eval()  # all 6 MiniLM layers
    _perturb_cross_attention(m)
    assert sorted(m.qformer.cross, key=int) == ["0", "2", "4"]  # every other layer
    ids, att = m.tokenize(["the dragon castle", "a much longer title about the galaxy robot"])
    tokens = torch.randn(B, 20, 384)
    with torch.no_grad():
        text = m.encode_text(ids, att)
        no_graph = m.qformer(ids, att, tokens, torch.zeros(B, 20, dtype=torch.bool))
        with_graph = m.qformer(ids, att, tokens, torch.ones(B, 20, dtype=torch.bool))
    torch.testing.assert_close(no_graph, text, rtol=1e-4, atol=1e-4)
    assert (with_graph - text).abs().max() > 1e-3


def test_empty_graph_context_is_the_text_only_context(models):
    """∅_G (dropped graph) makes the UNet see exactly the text context, in every graph mode."""
    x, t = torch.randn(B, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 700])
    for mode in ("qformer", "no_qformer"):
        m = models[mode]
        ids, att = m.tokenize(["a dragon castle", "galaxy robot"])
        with torch.no_grad():
            ctx, mask = m.context(ids, att, m.prepare_graph(neighbour_sets()), drop_graph=torch.tensor([True, True]))
            text = m.encode_text(ids, att)
            dropped = m(x, t, ctx, mask)
            text_only = m(x, t, text, torch.ones(B, 8, dtype=torch.bool))
        torch.testing.assert_close(dropped, text_only, rtol=0, atol=1e-5)


def test_save_load_round_trip_is_bit_exact(models, tmp_path):
    from g2i_core.model.modeling import G2IModel
    from g2i_core.storage import Storage

    m = models["qformer"]
    _perturb_cross_attention(m)
    m.save_pretrained(tmp_path / "local")
    loaded = G2IModel.from_pretrained(tmp_path / "local")
    a, b = m.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config == m.config.replace(unet_config=loaded.config.unet_config,
                                             image_encoder_config=loaded.config.image_encoder_config)
    # through the storage layer (file:// here; s3:// is the same code path)
    store = Storage(f"file://{tmp_path}/store")
    for name in ("config.json", "model.safetensors"):
        store.put_bytes(store.uri("models/r1", name), (tmp_path / "local" / name).read_bytes())
    again = G2IModel.from_pretrained(store.uri("models/r1"), storage=store)
    assert all(torch.equal(a[k], again.state_dict()[k]) for k in a)
    assert not (tmp_path / "local" / "model.safetensors").read_bytes().startswith(b"PK")  # not a pickle zip


def test_frozen_and_trainable_parts(models):
    m = models["qformer"]
    assert not any(p.requires_grad for p in m.text_encoder.parameters())
    assert all(p.requires_grad for p in m.unet.parameters())
    assert all(p.requires_grad for p in m.graph_tokens.parameters())
    assert all(p.requires_grad for p in m.qformer.cross.parameters())
    assert not any(k.startswith("text_encoder.") for k in m.saved_state_dict())


def test_condition_dropout_rates():
    from g2i_core.model.train import dropout_masks

    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    drop_text, drop_graph = dropout_masks(u, p_text=0.1, p_graph=0.2, p_both=0.05)
    both = (drop_text & drop_graph).float().mean().item()
    text_only = (drop_text & ~drop_graph).float().mean().item()
    graph_only = (drop_graph & ~drop_text).float().mean().item()
    assert abs(both - 0.05) < 0.003 and abs(text_only - 0.1) < 0.003 and abs(graph_only - 0.2) < 0.003
    none_t, none_g = dropout_masks(u, 0.0, 0.0, 0.0)
    assert not none_t.any() and not none_g.any()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="graph_mode"):
        tiny_config(graph_mode="graph")
    with pytest.raises(ValueError, match="resolution"):
        tiny_config(resolution=30)
    from g2i_core.model.train import TrainConfig

    with pytest.raises(ValueError, match="dropout probabilities"):
        TrainConfig(p_drop_text=0.6, p_drop_graph=0.6)


def test_missing_sd15_paths_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sd15_path is empty"):
        sd15_config("", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"sd15_path='/nonexistent/sd15' is not a local directory"):
        sd15_config("/nonexistent/sd15", str(tmp_path))
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"lacks subfolders \['vae', 'text_encoder', 'tokenizer'\]"):
        sd15_config(str(tmp_path / "sd"), str(tmp_path))
    for sub in ("vae", "text_encoder", "tokenizer"):
        (tmp_path / "sd" / sub).mkdir()
    with pytest.raises(FileNotFoundError, match="clip_vision_path='/nope'"):
        sd15_config(str(tmp_path / "sd"), "/nope")


@pytest.mark.slow
def test_sd15_architecture_at_full_size_with_random_weights():
    """The sd15 path, full-size SD1.5 UNet/VAE/CLIP-L text + ViT-L/14 vision, random init, no download."""
    from g2i_core.model.modeling import build_model

    torch.manual_seed(0)
    m = build_model(sd15_config("", "", random_weights=True)).eval()
    assert m.unet.config.cross_attention_dim == 768 and m.unet.config.block_out_channels == (320, 640, 1280, 1280)
    assert sum(p.numel() for p in m.unet.parameters()) > 800e6
    assert m.image_encoder.config.image_size == 224 and m.image_encoder.config.projection_dim == 768
    assert sorted(m.qformer.cross, key=int) == ["0", "2", "4", "6", "8", "10"] and m.qformer.causal
    from g2i_core.model.modeling import GraphInputs

    ids = torch.randint(1, 49407, (1, 77))
    att = torch.ones(1, 77, dtype=torch.long)
    graph = GraphInputs(torch.rand(1, 5, 3, 224, 224), torch.tensor([[True, True, False, False, False]]),
                        torch.randint(1, 49407, (1, 5, 77)), torch.ones(1, 5, 77, dtype=torch.long),
                        torch.tensor([[True, True, False, False, False]]))
    with torch.no_grad():
        ctx, mask = m.context(ids, att, graph)
        assert ctx.shape == (1, 154, 768)  # 77 text + 77 Graph-QFormer tokens
        latents = m.encode_images(torch.rand(1, 3, 64, 64) * 2 - 1)  # (1, 4, 8, 8)
        eps = m(latents, torch.tensor([500]), ctx, mask)
    assert eps.shape == (1, 4, 8, 8) and torch.isfinite(eps).all()


def test_frozen_image_encoder_cache_is_exact_and_encodes_each_image_once():
    """A frozen neighbour-image encoder with ``image_cache_size`` encodes each image key once; the
    context equals the uncached one (no_qformer: graph tokens go straight into the context)."""
    from g2i_core.model.modeling import NeighbourSet, build_model

    torch.manual_seed(0)
    m = build_model(small(graph_mode="no_qformer", train_image_encoder=False)).eval()
    sets = [NeighbourSet([colour((255, 0, 0)), colour((0, 0, 255))], ["red", "blue"], ["img/red", "img/blue"]),
            NeighbourSet([colour((255, 0, 0)), None], ["red again", None], ["img/red", None])]
    ids, att = m.tokenize(["a dragon", "a castle"])
    graph = m.prepare_graph(sets)
    assert graph.image_keys == ("img/red", "img/blue", None, "img/red", None, None)
    encoded = []  # images per encoder call
    m.image_encoder.register_forward_pre_hook(lambda mod, args, kwargs: encoded.append(len(kwargs["pixel_values"])),
                                              with_kwargs=True)
    with torch.no_grad():
        plain, mask = m.context(ids, att, graph)
        uncached_calls = list(encoded)
        m.image_cache_size = 100
        encoded.clear()
        first, _ = m.context(ids, att, graph)
        second, _ = m.context(ids, att, graph)
    assert uncached_calls == [2 * 3]  # every slot, padding included
    assert encoded == [2]  # red and blue once each; the second call is served from the cache
    assert torch.allclose(plain[mask], first[mask], atol=1e-5) and torch.equal(first, second)
    # a full cache starts over instead of growing past its size
    m.image_cache_size = 1
    with torch.no_grad():
        m.context(ids, att, graph)
    assert len(m._image_cache) == 2


def test_graph_inputs_keep_image_keys_through_cat_and_to():
    from g2i_core.model.modeling import GraphInputs, NeighbourSet

    t = torch.zeros
    keyed = GraphInputs(t(1, 2, 3, 4, 4), t(1, 2, dtype=torch.bool), t(1, 2, 3, dtype=torch.long),
                        t(1, 2, 3, dtype=torch.long), t(1, 2, dtype=torch.bool), ("a", None))
    other = GraphInputs(*(getattr(keyed, f) for f in ("pixels", "image_mask", "text_ids", "text_attention",
                                                       "text_mask")), ("b", "c"))
    plain = GraphInputs(keyed.pixels, keyed.image_mask, keyed.text_ids, keyed.text_attention, keyed.text_mask)
    assert GraphInputs.cat([keyed, other]).image_keys == ("a", None, "b", "c")
    assert GraphInputs.cat([keyed, plain]).image_keys is None  # a batch without keys turns the cache off
    assert keyed.to("cpu").image_keys == ("a", None)
    assert NeighbourSet([None], ["t"]).image_keys == []


def test_clip_text_states_are_unmasked_like_sd15_and_minilm_keeps_its_mask():
    """SD-1.5's UNet was trained on unmasked CLIP text states: the empty prompt and padded prompts must give
    exactly what an unmasked CLIPTextModel call gives; a BERT-style encoder (MiniLM) keeps its mask."""
    from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

    from g2i_core.model.modeling import text_encoder_states

    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=12)).eval()
    ids = torch.tensor([[1, 5, 2, 0, 0, 0], [1, 2, 0, 0, 0, 0]])  # a short prompt and the empty prompt, padded
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        got = text_encoder_states(clip, ids, mask)
        unmasked = clip(input_ids=ids).last_hidden_state
        masked = clip(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(got, unmasked)
    assert not torch.allclose(got, masked)  # the mask would change the padded positions the UNet attends to
    bert = BertModel(BertConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, max_position_embeddings=12)).eval()
    with torch.no_grad():
        expected = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(text_encoder_states(bert, ids, mask), expected)
