"""gencore.data: embedded datasets (nothing downloaded), tokenizers and resumable batch streams."""
from .batches import ImageBatches, LMBatches, LMEvalBatches, SampledBatches
from .sources import (ImageData, SampledDataset, TextData, digits, english_text, image_folder,
                      stdlib_code, text_file)
from .tokenizers import (ByteTokenizer, CharTokenizer, load_tokenizer, save_tokenizer,
                         tokenizer_from_state)

__all__ = [
    "TextData", "ImageData", "stdlib_code", "english_text", "text_file", "digits", "image_folder",
    "SampledDataset", "CharTokenizer", "ByteTokenizer", "tokenizer_from_state", "load_tokenizer",
    "save_tokenizer", "LMBatches", "LMEvalBatches", "ImageBatches", "SampledBatches",
]
