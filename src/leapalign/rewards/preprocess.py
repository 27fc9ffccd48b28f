"""Torch-only image preprocessing for CLIP/BLIP-style rewards, differentiable w.r.t. the pixels.

Two official pipelines. (1) Short side to n and centre crop: the PIL pipelines (torchvision `Resize(n, BICUBIC)`,
`CenterCrop(n)`, `ToTensor`, `Normalize`) of OpenAI CLIP (clip/clip.py `_transform`), the LAION aesthetic
predictor (which scores with `clip.load("ViT-L/14")`'s preprocess) and ImageReward, and (up to the 1-pixel crop
offset convention) transformers' `CLIPImageProcessor` of PickScore's model card. (2) Longest side to n and
zero padding: HPSv2's scoring transform (`resize_longest_pad`).
`F.interpolate(mode="bicubic", antialias=True)` uses the same cubic kernel (a = -0.5) and the same widened
support on downscaling as PIL, so it matches PIL's BICUBIC up to PIL's uint8 rounding (max 0.0044 on [0, 1]
pixels, ~1/255, measured on the scikit-image photos; see tests/test_rewards_preprocess.py, docs/rewards.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# OpenAI CLIP statistics: shared by CLIP, OpenCLIP (HPSv2), PickScore, the aesthetic head's CLIP and ImageReward.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side equal to `size`, the long side truncated as torchvision does."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, C, size, size): bicubic antialiased resize of the short side, then centre crop.

    Like PIL, the resize is two 1-D passes, width first, each clamped to [0, 1] (PIL stores each pass as
    uint8); without the clamps bicubic overshoot at sharp edges differs from PIL by up to 0.1. Saturated
    pixels get no gradient, as they have no effect in the official pipeline either. Computed in float32 at
    least, since CPU antialiased bicubic has no half-precision kernel.
    """
    height, width = images.shape[-2:]
    new_h, new_w = resized_shape(height, width, size)
    x = images if images.dtype == torch.float64 else images.float()
    if new_w != width:
        x = F.interpolate(x, size=(height, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    if new_h != height:
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top = int(round((new_h - size) / 2.0))  # torchvision's CenterCrop offset
    left = int(round((new_w - size) / 2.0))
    return x[..., top : top + size, left : left + size]  # (B, C, size, size)


def resize_longest_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, C, size, size): HPSv2's scoring transform, nothing cropped.

    tgxs002/HPSv2 (hpsv2/img_score.py builds `preprocess_val` with light_augmentation=True, i.e.
    src/open_clip/transform.py `image_transform(..., resize_longest_max=True)`, fill_color=0): after `ToTensor`,
    `ResizeMaxSize` resizes the float tensor so that the longest side is `size` (the other one
    round(side * size / longest)) with torchvision's bicubic tensor resize (antialiased by default since
    torchvision 0.17, no clamp on float tensors: one `F.interpolate` call), then pads with 0 (black, before
    `Normalize`) to a square, left/top getting pad // 2. A square input is only resized.
    """
    height, width = images.shape[-2:]
    x = images if images.dtype == torch.float64 else images.float()  # no half-precision antialiased bicubic on CPU
    scale = size / max(height, width)
    if scale == 1.0 and height == width:
        return x
    new_h, new_w = round(height * scale), round(width * scale)
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)  # (B, C, size, size)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(B, C, H, W) -> (images - mean) / std per channel."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] -> model input (B, 3, size, size), normalised, cast to `dtype`."""
    x = normalize(resize_center_crop(images, size), mean, std)
    return x if dtype is None else x.to(dtype)
