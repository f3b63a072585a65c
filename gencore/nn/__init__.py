"""gencore.nn: modules built on gencore.ops."""
from .attention import KVCache, MultiHeadAttention, RotaryEmbedding
from .gumbel_softmax import GumbelSoftmax

__all__ = ["GumbelSoftmax", "KVCache", "MultiHeadAttention", "RotaryEmbedding"]
