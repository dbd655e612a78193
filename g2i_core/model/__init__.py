"""InstructG2I model: Graph-QFormer conditioning, training and graph-guided sampling.

Heavy imports (torch, diffusers, transformers) happen when these names are first used.
"""

from __future__ import annotations

from g2i_core.model.config import GRAPH_MODES, G2IConfig, sd15_config, tiny_config

__all__ = ["GRAPH_MODES", "G2IConfig", "G2IModel", "G2IPipeline", "NeighbourSet", "TrainConfig", "build_model",
           "load_conditions", "sd15_config", "tiny_config", "train"]

_LAZY = {
    "G2IModel": "g2i_core.model.modeling", "NeighbourSet": "g2i_core.model.modeling",
    "build_model": "g2i_core.model.modeling", "G2IPipeline": "g2i_core.model.pipeline",
    "TrainConfig": "g2i_core.model.train", "train": "g2i_core.model.train",
    "load_conditions": "g2i_core.model.data",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'g2i_core.model' has no attribute {name!r}")
