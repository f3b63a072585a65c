"""Frechet distance and KID between two sets of feature vectors (no scipy).

Frechet distance (the FID formula): ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).
The trace term is computed without a general matrix square root: with R = S1^(1/2) (eigh of a
symmetric PSD matrix, negative round-off eigenvalues clamped to 0), S1 S2 is similar to the
symmetric PSD matrix R S2 R, so tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of R S2 R). Everything
runs in float64; this is stable for singular covariances (fewer samples than dimensions), where
scipy's `sqrtm` needs an epsilon on the diagonal and can return complex values.

KID (Binkowski et al. 2018): the unbiased estimator of MMD^2 with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets (seeded).
"""
from __future__ import annotations

from typing import Dict

import torch

__all__ = ["frechet_distance", "gaussian_stats", "frechet_from_stats", "kid"]


def _as2d(x) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    return x


def gaussian_stats(x) -> tuple:
    x = _as2d(x)
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_from_stats(mu1, s1, mu2, s2) -> float:
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    d = ((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean
    return float(d.clamp_min(0))


def frechet_distance(x, y) -> float:
    """Frechet distance between Gaussians fitted to feature sets x (N, D) and y (M, D)."""
    return frechet_from_stats(*gaussian_stats(x), *gaussian_stats(y))


def kid(x, y, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> Dict[str, float]:
    """Kernel Inception Distance-style score: mean and std over `subsets` random subsets (of
    min(subset_size, N, M) vectors each) of the unbiased MMD^2 with a cubic polynomial kernel."""
    x, y = _as2d(x), _as2d(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    d = x.shape[1]
    k = min(subset_size, x.shape[0], y.shape[0])
    # Kernel matrices once; subsets index into them.
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        xi = torch.randperm(x.shape[0], generator=g)[:k]
        yi = torch.randperm(y.shape[0], generator=g)[:k]
        a, b, c = kxx[xi][:, xi], kyy[yi][:, yi], kxy[xi][:, yi]
        vals.append((a.sum() - a.diagonal().sum()) / (k * (k - 1))
                    + (b.sum() - b.diagonal().sum()) / (k * (k - 1)) - 2 * c.mean())
    v = torch.stack(vals)
    return {"kid": float(v.mean()), "kid_std": float(v.std()) if subsets > 1 else 0.0}
