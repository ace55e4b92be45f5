"""Particle segmentation: U-Net inference through ONNX Runtime (training needs ``[train]``).

Only the torch-free inference API is imported here; ``nptrack.segment.model``, ``data``,
``train`` and ``export`` import torch and are loaded on demand.
"""

from nptrack.segment.infer import ModelFileError, Segmenter, read_metadata, select_providers

__all__ = ["ModelFileError", "Segmenter", "read_metadata", "select_providers"]
