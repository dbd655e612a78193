"""Evaluation of generated images against the ground truth of the same nodes.

Modules: ``features`` (hand-crafted colour/texture features), ``offline`` (style space + community
classifier trained on real images), ``encoders`` (CLIP / DINOv2 / torchmetrics FID from local
paths), ``metrics`` (Fréchet distance, bootstrap intervals), ``runner`` (metrics.json for several
methods and seeds), ``report`` (self-contained HTML), ``suite`` (``g2i evaluate --suite paper``).
Nothing heavy is imported here.
"""
