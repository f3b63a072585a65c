"""gencore.metrics: BLEU / Self-BLEU, NLL and bits per character, Frechet distance and KID on a
small trained digit classifier, and the NLL metrics of the synthetic oracle benchmark."""
from .bleu import BleuReference, bleu, self_bleu, tokenize
from .digits_features import digit_features, feature_net, image_metrics
from .frechet import frechet_distance, gaussian_stats, kid
from .nll import frontier_gap, nll_div, nll_gen, nll_oracle, sequence_nll
from .text import bits_per_char, bits_per_token, mean_nll, perplexity

__all__ = [
    "bleu", "self_bleu", "BleuReference", "tokenize", "frechet_distance", "gaussian_stats", "kid",
    "feature_net", "digit_features", "image_metrics", "nll_oracle", "nll_gen", "nll_div",
    "sequence_nll", "frontier_gap", "bits_per_token", "bits_per_char", "perplexity", "mean_nll",
]
