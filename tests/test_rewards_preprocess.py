"""Our torch preprocessing against the official PIL pipelines on real photos (scikit-image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from helpers.rewards_tiny import photos

from leapalign.rewards.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess, resize_center_crop, resized_shape

# Measured: max 0.0044, mean 0.0012 on [0, 1] pixels (PIL rounds every pass to uint8: 0.5/255 per pass).
MAX_TOL = 1.5 / 255
MEAN_TOL = 0.5 / 255


def pil_pipeline(photo: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's Resize(size, BICUBIC) + CenterCrop(size) + ToTensor on a PIL image, written with PIL
    alone (torchvision cannot be installed here): what OpenAI CLIP, OpenCLIP/HPSv2 and ImageReward run."""
    image = Image.fromarray((photo * 255).round().byte().permute(1, 2, 0).numpy())
    new_h, new_w = resized_shape(image.height, image.width, size)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # (3, size, size)


@pytest.mark.parametrize("size", [224, 384, 600])
def test_resize_crop_matches_pil_on_photos(size):
    for photo in photos():
        photo = (photo * 255).round() / 255  # the exact uint8 values PIL sees
        diff = (resize_center_crop(photo[None], size)[0] - pil_pipeline(photo, size)).abs()
        assert diff.max() < MAX_TOL and diff.mean() < MEAN_TOL, (tuple(photo.shape), size, diff.max(), diff.mean())


def test_normalised_input_matches_transformers_clip_image_processor():
    """PickScore's preprocessing: transformers' PIL CLIPImageProcessor (crop offset (h - s) // 2, which equals
    torchvision's round((h - s) / 2) on these photos)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil()
    for photo in photos():
        image = Image.fromarray((photo * 255).round().byte().permute(1, 2, 0).numpy())
        ref = processor(images=image, return_tensors="pt")["pixel_values"][0]
        ours = clip_preprocess(((photo * 255).round() / 255)[None])[0]
        assert (ours - ref).abs().max() < MAX_TOL / min(CLIP_STD)


def test_preprocess_is_differentiable_and_identity_when_sizes_match():
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    out = clip_preprocess(x)
    ref = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref)
    y = torch.rand(2, 3, 300, 500, requires_grad=True)
    clip_preprocess(y, dtype=torch.bfloat16).float().sum().backward()
    assert torch.isfinite(y.grad).all() and (y.grad != 0).float().mean() > 0.5
