"""Networks from the papers: segmentors (``segmentation/``: FCN, DANet, CCNet, FLANet) and classifiers
(EPSANet, BAM/SGE/SE/CBAM-ResNet)."""
from .registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
