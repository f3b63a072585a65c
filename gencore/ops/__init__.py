"""gencore.ops: the fused ops, each with a compiled kernel and a pure-PyTorch reference."""
from .gan_loss import gan_loss
from .gumbel_softmax import gumbel_softmax

__all__ = ["gan_loss", "gumbel_softmax"]
