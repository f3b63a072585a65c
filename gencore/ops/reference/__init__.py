"""Pure-PyTorch references: the specification of every fused op and the tests' oracle."""
from .gumbel_softmax import gumbel_noise, gumbel_softmax_reference

__all__ = ["gumbel_noise", "gumbel_softmax_reference"]
