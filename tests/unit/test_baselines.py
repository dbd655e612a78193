"""The paper's InstructPix2Pix / ControlNet baselines and the GraphSAGE / GAT ablation (tiny configs, seed 0)."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.usefixtures("torch_one_thread")

from g2i_core.model.config import G2IConfig, tiny_config  # noqa: E402

B = 2


def small(**kw) -> G2IConfig:
    return tiny_config(resolution=16, max_neighbours=3, text_max_length=8, **kw)


@pytest.fixture(scope="module")
def models():
    from g2i_core.model.modeling import build_model

    out = {}
    for mode in ("instructpix2pix", "controlnet", "gnn_sage", "gnn_gat"):
        torch.manual_seed(0)
        out[mode] = build_model(small(graph_mode=mode)).eval()
    return out


def colour(rgb):
    from PIL import Image

    return Image.new("RGB", (20, 20), rgb)


def neighbour_sets():
    from g2i_core.model.modeling import NeighbourSet

    return [NeighbourSet([None, colour((255, 0, 0)), colour((0, 0, 255))], ["no image", "red", "blue"]),
            NeighbourSet([colour((0, 255, 0))], ["green"])]


def batch(m):
    gen = torch.Generator().manual_seed(1)
    ids, att = m.tokenize(["a dragon castle", "galaxy robot"])
    return torch.randn(B, 3, 16, 16, generator=gen), torch.tensor([10, 700]), ids, att


# ---- the image-conditioned baselines -------------------------------------------------------------------
def test_condition_is_the_strongest_image_neighbour(models):
    m = models["instructpix2pix"]
    g = m.prepare_graph(neighbour_sets())
    assert g.pixels.shape == (B, 1, 3, 16, 16) and g.image_mask.tolist() == [[True], [True]]
    red = g.pixels[0, 0].mean(dim=(1, 2))  # the first neighbour has no image: the second (red) is taken
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1


@pytest.mark.parametrize("mode", ["instructpix2pix", "controlnet"])
def test_baseline_shapes_and_text_only_context(models, mode):
    m = models[mode]
    x, t, ids, att = batch(m)
    ctx, mask = m.context(ids, att, m.prepare_graph(neighbour_sets()))
    assert ctx.shape == (B, 8, 384) and mask.all()  # no graph tokens: the text context alone
    with torch.no_grad():
        eps = m.predict_noise(x, t, ids, att, m.prepare_graph(neighbour_sets()))
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_ip2p_extra_input_channels_start_at_zero():
    """The expanded UNet computes exactly the base UNet: the condition has no effect at initialisation."""
    from diffusers import UNet2DConditionModel

    from g2i_core.model.baselines import expand_input_channels

    torch.manual_seed(0)
    base = UNet2DConditionModel(**small().unet_config)
    ip2p = copy.deepcopy(base)
    expand_input_channels(ip2p)
    assert ip2p.config.in_channels == 6 and ip2p.conv_in.weight.shape[1] == 6
    assert not ip2p.conv_in.weight[:, 3:].any()
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(B, 3, 16, 16, generator=gen), torch.randn(B, 8, 384, generator=gen)
    with torch.no_grad():
        want = base(x, torch.tensor([5, 500]), encoder_hidden_states=ctx).sample
        got = ip2p(torch.cat([x, torch.randn(B, 3, 16, 16, generator=gen)], 1), torch.tensor([5, 500]),
                   encoder_hidden_states=ctx).sample
    torch.testing.assert_close(got, want)
    expand_input_channels(ip2p)  # a rebuilt (already expanded) UNet is left alone
    assert ip2p.config.in_channels == 6


def test_controlnet_zero_convs_make_initial_residuals_zero(models):
    m = models["controlnet"]
    x, t, ids, att = batch(m)
    ctx, _ = m.context(ids, att)
    cond = m.condition(m.prepare_graph(neighbour_sets()), B)
    with torch.no_grad():
        down, mid = m.controlnet(x, t, encoder_hidden_states=ctx, controlnet_cond=cond, return_dict=False)
        assert len(down) > 0 and all(not r.any() for r in down) and not mid.any()
        torch.testing.assert_close(m(x, t, ctx, None, condition=cond), m.unet(x, t, encoder_hidden_states=ctx).sample)


def test_condition_dropout(models):
    """InstructPix2Pix zeroes a dropped image condition (trains ε(·, ∅_I)); ControlNet keeps its control."""
    drop = torch.tensor([True, False])
    for mode, dropped_is_zero in (("instructpix2pix", True), ("controlnet", False)):
        m = models[mode]
        g = m.prepare_graph(neighbour_sets())
        cond = m.condition(g, B, drop if m.drops_condition else None)
        assert (not cond[0].any()) == dropped_is_zero and cond[1].any()


@pytest.mark.parametrize("mode", ["instructpix2pix", "controlnet"])
def test_guidance_at_unit_scales_is_the_conditional_branch(models, mode):
    """s_T = s_I = 1 collapses InstructPix2Pix's three branches to ε(c_T, c_I); s_T = 1 gives ControlNet's
    ε(c_T, c): the formulas combine the branches as written."""
    m = models[mode]
    x, t, ids, att = batch(m)
    ctx_text, _ = m.context(ids, att)
    ctx_empty, _ = m.context(*m.tokenize(["", ""]))
    cond = m.condition(m.prepare_graph(neighbour_sets()), B)
    _perturb(m)
    with torch.no_grad():
        guided = m.guided_noise(x, t[:1], ctx_text, ctx_empty, cond, 1.0, 1.0)
        full = m(x, t[:1].expand(B), ctx_text, torch.ones(ctx_text.shape[:2], dtype=torch.bool), condition=cond)
        scaled = m.guided_noise(x, t[:1], ctx_text, ctx_empty, cond, 3.0, 1.0)
    torch.testing.assert_close(guided, full, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(scaled, full, atol=1e-4)


def _perturb(m):
    """Non-zero zero-inits, so the condition and the text matter (a fresh model ignores the image)."""
    gen = torch.Generator().manual_seed(3)
    for name, p in m.named_parameters():
        if ("conv_in" in name or "controlnet_" in name or "conv_out" in name) and not p.any():
            p.data = torch.randn(p.shape, generator=gen) * 0.05


@pytest.mark.parametrize("mode", ["instructpix2pix", "controlnet"])
def test_baseline_pipeline_save_reload_and_guard(models, mode, tmp_path):
    from g2i_core.model.baselines import BaselinePipeline, own_pipeline
    from g2i_core.model.modeling import G2IModel
    from g2i_core.model.pipeline import G2IPipeline

    m = models[mode]
    m.save_pretrained(tmp_path)
    again = G2IModel.from_pretrained(tmp_path)
    assert type(again) is type(m) and again.unet.config.in_channels == m.unet.config.in_channels
    for (k, a), (k2, b) in zip(m.saved_state_dict().items(), again.saved_state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    with pytest.raises(ValueError, match="BaselinePipeline"):  # the graph-token pipeline cannot sample it
        G2IPipeline(again)(["a"], [neighbour_sets()[0]], num_inference_steps=1, output_type="pt")
    pipe = own_pipeline(G2IPipeline(again))
    assert isinstance(pipe, BaselinePipeline)
    out = pipe(["a dragon", "a robot"], neighbour_sets(), text_scale=3.0, graph_scale=1.5, num_inference_steps=2,
               output_type="pt")
    assert out.shape == (B, 3, 16, 16) and 0 <= out.min() and out.max() <= 1


def test_gradients_reach_every_trainable_part(models):
    for mode in ("instructpix2pix", "controlnet", "gnn_sage", "gnn_gat"):
        m = copy.deepcopy(models[mode]).train()
        x, t, ids, att = batch(m)
        eps = m.predict_noise(x, t, ids, att, m.prepare_graph(neighbour_sets()))
        eps.pow(2).mean().backward()
        missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (mode, missing[:5])
        if mode == "controlnet":  # the zero convs start at zero: their inputs' gradients are zero, theirs not
            assert any(p.grad.abs().sum() > 0 for n, p in m.named_parameters() if "controlnet_down_blocks" in n)


# ---- the GNN ablation ---------------------------------------------------------------------------------------
def test_gnn_context_shapes_and_mask(models):
    m = models["gnn_sage"]
    x, t, ids, att = batch(m)
    from g2i_core.model.modeling import NeighbourSet

    sets = [neighbour_sets()[0], NeighbourSet([], [])]  # the second node has no neighbour at all
    ctx, mask = m.context(ids, att, m.prepare_graph(sets))
    T = m.config.tokens_per_neighbour
    assert ctx.shape == (B, 8 + T, 384) and mask[0].all() and not mask[1, 8:].any()
    assert m.empty_graph_context(B, ctx)[0].shape == (B, T, 384)


def _aggregator_inputs(seed=0, N=4, D=16):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D, generator=gen), torch.randn(B, N, 8, generator=gen),
            torch.tensor([[True, True, False, True], [True, False, True, True]]),
            torch.randn(B, N, D, generator=gen), torch.tensor([[True, False, True, True], [True, True, True, False]]))


@pytest.mark.parametrize("kind", ["sage", "gat"])
def test_gnn_aggregator_is_permutation_invariant_and_uses_the_edges(kind):
    from g2i_core.model.gnn import StarAggregator, star_edge_index

    torch.manual_seed(0)
    agg = StarAggregator(kind, image_dim=8, text_dim=16, dim=16, tokens=2).eval()
    centre, img, img_mask, txt, txt_mask = _aggregator_inputs()
    with torch.no_grad():
        tokens, mask = agg(centre, img, img_mask, txt, txt_mask)
        perm = torch.tensor([2, 0, 3, 1])
        permuted, _ = agg(centre, img[:, perm], img_mask[:, perm], txt[:, perm], txt_mask[:, perm])
        x = agg.node_features(centre, img, img_mask, txt, txt_mask)
        with_edges = agg.aggregate(x, star_edge_index(img_mask | txt_mask), B)
        without_edges = agg.aggregate(x, torch.zeros(2, 0, dtype=torch.long), B)  # same features, no edges
    assert tokens.shape == (B, 2, 16) and mask.all()
    torch.testing.assert_close(permuted, tokens, rtol=1e-5, atol=1e-6)  # a set function of the neighbours
    assert not torch.allclose(with_edges, without_edges, atol=1e-3)
    # the padded neighbours have no edge: their features change nothing
    img2, txt2 = img.clone(), txt.clone()
    img2[~img_mask] = 100.0
    pad = ~(img_mask | txt_mask)
    txt2[pad] = 100.0
    with torch.no_grad():
        padded, _ = agg(centre, img2, img_mask, txt2, txt_mask)
    torch.testing.assert_close(padded, tokens)


def test_star_edges():
    from g2i_core.model.gnn import star_edge_index

    edges = star_edge_index(torch.tensor([[True, False, True], [False, True, False]]))
    assert edges.tolist() == [[1, 3, 6], [0, 0, 4]]  # neighbour -> centre, stars of N + 1 = 4 nodes
