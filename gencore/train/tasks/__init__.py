"""gencore.train.tasks: the Task of each model family."""
from .image_gan import ImageGANTask
from .lm import LanguageModelTask
from .text_gan import TextGANTask
from .vae import VAETask

__all__ = ["LanguageModelTask", "VAETask", "ImageGANTask", "TextGANTask"]
