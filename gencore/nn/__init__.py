"""gencore.nn: modules built on gencore.ops."""
from .gumbel_softmax import GumbelSoftmax

__all__ = ["GumbelSoftmax"]
