"""gencore: fused PyTorch ops for generative models, the models, and a trainer.

`import gencore` loads the ops and the nn modules; the upper layers (models, data, train, metrics,
recipes) load on first use, so a user of the ops alone never imports them.
"""
import importlib

__version__ = "0.1.0"

from . import nn, ops  # noqa: E402,F401

_LAZY = ("models", "data", "train", "metrics", "recipes")
__all__ = ["nn", "ops", *_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'gencore' has no attribute {name!r}")
