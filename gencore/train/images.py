"""Image grids of samples, written as PNG files by Pillow."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["image_grid", "png_bytes", "save_png_grid"]


def image_grid(images: torch.Tensor, nrow: Optional[int] = None, pad: int = 1,
               scale: int = 1) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (C, H', W') grid with `pad` pixels of white between images and
    each pixel repeated `scale` times (8x8 digits are tiny)."""
    x = images.detach().float().cpu().clamp(0, 1)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    n, c, h, w = x.shape
    if scale > 1:
        x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        h, w = h * scale, w * scale
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + col * (w + pad):pad + col * (w + pad) + w] = x[i]
    return grid


def png_bytes(img: torch.Tensor) -> bytes:
    """(C, H, W) or (H, W) float in [0, 1] (C = 1 or 3) -> PNG file bytes (8-bit)."""
    from PIL import Image  # on first use: `import gencore.train` stays light

    if img.dim() == 2:
        img = img.unsqueeze(0)
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"PNG needs a (H, W) or (C, H, W) image with 1 or 3 channels, got shape "
                         f"{tuple(img.shape)}")
    a = (img.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    a = a.permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()  # (H, W) uint8 is an 8-bit grey image to Pillow, (H, W, 3) an RGB one
    Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(buf, "PNG")
    return buf.getvalue()


def save_png_grid(images: torch.Tensor, path: Union[str, Path], nrow: Optional[int] = None,
                  scale: int = 4) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image_grid(images, nrow=nrow, scale=scale)))
    return path
