"""Pure-PyTorch references: the specification of every fused op and the tests' oracle."""
from .attention import attention_reference
from .gan_loss import gan_loss_reference
from .gumbel_softmax import gumbel_noise, gumbel_softmax_reference

__all__ = ["attention_reference", "gan_loss_reference", "gumbel_noise", "gumbel_softmax_reference"]
