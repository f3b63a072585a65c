"""gencore: fused PyTorch ops for generative models, the models, and a trainer."""
__version__ = "0.1.0"

from . import nn, ops  # noqa: E402,F401

__all__ = ["nn", "ops", "__version__"]
