"""gencore.ops: the fused ops, each with a compiled kernel and a pure-PyTorch reference."""
from .attention import attention
from .gan_loss import gan_loss
from .gumbel_softmax import gumbel_softmax

__all__ = ["attention", "gan_loss", "gumbel_softmax"]
