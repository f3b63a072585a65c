"""gencore.ops: the fused ops, each with a compiled kernel and a pure-PyTorch reference."""
from ._attention import attention, document_ids_from_cu_seqlens, scaled_dot_product_attention
from ._gan_loss import gan_loss
from ._gumbel_softmax import gumbel_softmax
from .varlen import varlen_attn

__all__ = ["attention", "document_ids_from_cu_seqlens", "gan_loss", "gumbel_softmax", "varlen_attn",
           "scaled_dot_product_attention"]
