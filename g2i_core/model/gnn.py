"""The paper's GNN ablation: GraphSAGE or GAT aggregates the neighbourhood instead of the Graph-QFormer.

Each node's condition is a star graph, the neighbours pointing at the node itself (the centre)::

    neighbour n: image embed ─Linear─┐
                 text embed  ─Linear─┴─ + ─> x_n ──edge n → centre──┐
    centre:      own text (mean-pooled frozen text encoder) ─Linear─> x_c ─> conv ─ReLU─> conv ─> h_c
    h_c ─Linear─> T tokens ─LayerNorm─> graph tokens (B, T, D), T = tokens_per_neighbour

Only neighbours with an image or a text get an edge, so padded neighbours change nothing, and a node
without any neighbour has a masked graph context (its ∅_G), as in the QFormer path. The convolutions
are ``torch_geometric.nn.SAGEConv`` (mean aggregation) or ``GATConv`` (attention, with self-loops),
run on the B stars of a batch as one disjoint graph. Everything else — image encoder, text encoder,
UNet, training, the three-branch guidance — is ``G2IModel``'s, so the rows differ by the aggregator only.
"""

from __future__ import annotations

import torch
from torch import nn

from g2i_core.model.config import G2IConfig
from g2i_core.model.modeling import G2IModel, GraphInputs

GNN_KINDS = {"gnn_sage": "sage", "gnn_gat": "gat"}


def star_edge_index(valid: torch.Tensor) -> torch.Tensor:
    """(B, N) bool "neighbour present" -> edge_index (2, E) of B stars laid out as B blocks of N + 1 nodes
    (block b: centre b·(N+1), then its neighbours); one edge neighbour → centre per present neighbour."""
    B, N = valid.shape
    b, n = valid.nonzero(as_tuple=True)
    centre = b * (N + 1)
    return torch.stack([centre + 1 + n, centre])


class StarAggregator(nn.Module):
    """Neighbour (image, text) features + the centre's text feature -> ``tokens`` graph tokens."""

    def __init__(self, kind: str, image_dim: int, text_dim: int, dim: int, tokens: int, layers: int = 2,
                 heads: int = 4):
        super().__init__()
        from torch_geometric.nn import GATConv, SAGEConv

        if kind not in ("sage", "gat"):
            raise ValueError(f"kind must be 'sage' or 'gat', got {kind!r}")
        if kind == "gat" and dim % heads:
            raise ValueError(f"GAT: dim {dim} is not divisible by heads {heads}")
        self.kind, self.tokens = kind, tokens
        self.image_proj = nn.Linear(image_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.centre_proj = nn.Linear(text_dim, dim)
        self.convs = nn.ModuleList(SAGEConv(dim, dim, aggr="mean") if kind == "sage" else
                                   GATConv(dim, dim // heads, heads=heads)  # heads concatenated: dim out
                                   for _ in range(layers))
        self.to_tokens = nn.Linear(dim, tokens * dim)
        self.norm = nn.LayerNorm(dim)

    def node_features(self, centre_text: torch.Tensor, image_embeds: torch.Tensor, image_mask: torch.Tensor,
                      text_embeds: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """-> x (B·(N+1), D): per star the centre, then its N neighbours (a missing modality adds nothing)."""
        nbr = (self.image_proj(image_embeds) * image_mask[..., None].to(image_embeds.dtype)
               + self.text_proj(text_embeds) * text_mask[..., None].to(text_embeds.dtype))  # (B, N, D)
        x = torch.cat([self.centre_proj(centre_text)[:, None], nbr], 1)  # (B, N+1, D)
        return x.flatten(0, 1)

    def aggregate(self, x: torch.Tensor, edge_index: torch.Tensor, B: int) -> torch.Tensor:
        """Message passing over the stars -> the centres' embeddings (B, D)."""
        for i, conv in enumerate(self.convs):
            x = conv(x, edge_index)
            if i < len(self.convs) - 1:
                x = torch.relu(x)
        return x.view(B, -1, x.shape[-1])[:, 0]

    def forward(self, centre_text, image_embeds, image_mask, text_embeds, text_mask) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
        B = centre_text.shape[0]
        valid = image_mask | text_mask  # (B, N)
        h = self.aggregate(self.node_features(centre_text, image_embeds, image_mask, text_embeds, text_mask),
                           star_edge_index(valid), B)
        tokens = self.norm(self.to_tokens(h).view(B, self.tokens, -1))  # (B, T, D)
        return tokens, valid.any(1, keepdim=True).expand(B, self.tokens)


class GNNG2IModel(G2IModel):
    """G2IModel with the GraphSAGE / GAT aggregator in place of graph tokens + Graph-QFormer."""

    def __init__(self, cfg: G2IConfig, text_encoder: nn.Module, tokenizer, unet: nn.Module,
                 image_encoder: nn.Module | None = None, vae: nn.Module | None = None):
        if cfg.graph_mode not in GNN_KINDS:
            raise ValueError(f"GNNG2IModel needs graph_mode in {sorted(GNN_KINDS)}, got {cfg.graph_mode!r}")
        super().__init__(cfg, text_encoder, tokenizer, unet, image_encoder, vae)
        self.graph_tokens = None  # replaced by the aggregator below
        dim = text_encoder.config.hidden_size
        self.gnn = StarAggregator(GNN_KINDS[cfg.graph_mode], image_encoder.config.projection_dim, dim, dim,
                                  cfg.tokens_per_neighbour)

    def encode_graph(self, text_ids: torch.Tensor, text_attention: torch.Tensor,
                     graph: GraphInputs) -> tuple[torch.Tensor, torch.Tensor]:
        B, N = graph.image_mask.shape
        image_embeds = self.embed_neighbour_images(graph.pixels.flatten(0, 1), graph.image_mask.flatten(),
                                                   graph.image_keys).view(B, N, -1)  # (B, N, E)
        text_embeds = self.pool_text(graph.text_ids.flatten(0, 1), graph.text_attention.flatten(0, 1)).view(B, N, -1)
        centre = self.pool_text(text_ids, text_attention)  # (B, D): the node's own text
        return self.gnn(centre, image_embeds, graph.image_mask, text_embeds, graph.text_mask)

    def graph_context_len(self) -> int:
        return self.config.tokens_per_neighbour
