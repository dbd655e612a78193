"""g2i: graph-structured data to images. All pipeline logic lives in this package."""

__version__ = "0.1.0"
