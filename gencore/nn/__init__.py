"""gencore.nn: modules built on gencore.ops."""
from .attention import KVCache, MultiHeadAttention, RotaryEmbedding
from .gan_loss import GANLoss
from .gumbel_softmax import GumbelSoftmax

__all__ = ["GANLoss", "GumbelSoftmax", "KVCache", "MultiHeadAttention", "RotaryEmbedding"]
