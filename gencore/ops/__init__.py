"""gencore.ops: the fused ops, each with a compiled kernel and a pure-PyTorch reference."""
from .gumbel_softmax import gumbel_softmax

__all__ = ["gumbel_softmax"]
