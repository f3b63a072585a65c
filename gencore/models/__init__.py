"""gencore.models: plain nn.Modules for generative models, built on gencore.nn / gencore.ops."""
from .dcgan import Discriminator, Generator, r1_penalty
from .gpt import GPT, GPTConfig
from .oracle import OracleLSTM
from .text_gan import CNNDiscriminator, TemperatureSchedule, TextGenerator
from .vae import ELBO, VAE

__all__ = ["GPT", "GPTConfig", "VAE", "ELBO", "Generator", "Discriminator", "r1_penalty",
           "OracleLSTM", "TextGenerator", "CNNDiscriminator", "TemperatureSchedule"]
