"""ShapesWorld's object detector for the evaluator: colour segmentation, connected components, template fitting.

Per image: each pixel is explained as a blend of the white background and one palette colour (which handles
anti-aliased edges); same-colour pixels form 4-connected components; each component large enough to be an
object is classified by fitting the three shape templates at its own position and scale and keeping the one
that overlaps it best. Bounding-box corners, the previous classifier, fail on generated and blurred shapes: a
blur rounds a 7 px square's corners, so it read as a circle. Template fitting uses the whole outline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leapalign.shapes.prompts import BACKGROUND, COLORS, PALETTE, SHAPES
from leapalign.shapes.render import signed_distance

MIN_AREA_FRAC = 0.01  # components smaller than 1% of the canvas (10 px at 32x32) are specks, not objects
MAX_RESIDUAL = 0.35  # RGB distance from the background-colour blend line beyond which a pixel is unexplained
# Area of each template per squared half-extent r (the renderer's shapes: circle pi r^2, square (2r)^2, an
# upward triangle of base 2r and height 2r), and the offset of its centroid below its box centre in units of r.
_AREA = torch.tensor([math.pi, 4.0, 2.0])
_CENTROID_DY = torch.tensor([0.0, 0.0, 1.0 / 3.0])
# The fit searches scale and a sub-pixel shift around the moment estimate: a thresholded blurred or generated
# shape loses or gains a rim, and its centroid sits up to half a pixel off.
_SCALES = torch.tensor([0.85, 0.92, 1.0, 1.08, 1.16])
_SHIFTS = torch.tensor([-0.5, 0.0, 0.5])
_BLUR = (torch.tensor([[1.0, 2.0, 1.0]]).T @ torch.tensor([[1.0, 2.0, 1.0]]) / 16)[None, None]  # (1, 1, 3, 3)


@dataclass(frozen=True)
class DetectedObject:
    """One object: shape and colour names, bounding box (x0, y0, x1, y1) in pixels (exclusive ends), area;
    fit: the best template's IoU with the component (1 = a perfect shape, about 0.6 = a blob of no shape)."""

    shape: str
    color: str
    box: tuple[float, float, float, float]
    area: float
    fit: float = 1.0

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


def blend_weights(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W) in [0, 1] -> (alpha, residual), each (B, H, W, C): the weight of each palette colour
    in its blend with the background that best explains a pixel, and that blend's RGB distance to the pixel."""
    x = images.detach().float().cpu().permute(0, 2, 3, 1)  # (B, H, W, 3)
    bg = torch.tensor(BACKGROUND)
    d = torch.tensor([PALETTE[c] for c in COLORS]) - bg  # (C, 3)
    off = x - bg  # (B, H, W, 3)
    alpha = ((off @ d.T) / (d * d).sum(-1)).clamp(0, 1)  # (B, H, W, C): blend weight towards each colour
    resid = (off[..., None, :] - alpha[..., None] * d).norm(dim=-1)  # (B, H, W, C)
    return alpha, resid


def _labels(alpha: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    best = resid.argmin(-1)  # (B, H, W)
    a = alpha.gather(-1, best[..., None])[..., 0]
    r = resid.gather(-1, best[..., None])[..., 0]
    return torch.where((a >= 0.5) & (r <= MAX_RESIDUAL), best, torch.full_like(best, -1))


def segment(images: torch.Tensor) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] -> labels (B, H, W) long: colour index, or -1 for background/unexplained."""
    return _labels(*blend_weights(images))


def components(labels: torch.Tensor) -> torch.Tensor:
    """labels (B, H, W) -> component ids (B, H, W), 4-connected within one colour, -1 on background.

    Min-label propagation, batched: each pixel repeatedly takes the smallest id among same-colour neighbours.
    """
    b, h, w = labels.shape
    big = b * h * w
    ids = torch.arange(big).view(b, h, w)
    comp = torch.where(labels >= 0, ids, torch.full_like(ids, big))
    while True:
        new = comp.clone()
        for dim, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
            nb = torch.roll(comp, step, dims=dim)
            same = torch.roll(labels, step, dims=dim) == labels
            edge = torch.zeros_like(same)  # roll wraps around; block the wrapped row/column
            idx = [slice(None)] * 3
            idx[dim] = 0 if step == 1 else -1
            edge[tuple(idx)] = True
            new = torch.where(same & ~edge & (labels >= 0), torch.minimum(new, nb), new)
        if torch.equal(new, comp):
            return torch.where(labels >= 0, comp, torch.full_like(comp, -1))
        comp = new


def template_fit(soft: torch.Tensor) -> torch.Tensor:
    """soft (H, W) in [0, 1]: one object's colour weight, zero outside it -> (3,) best soft IoU of a circle, a
    square and a triangle template with it.

    Each template starts from the object's colour mass and its centroid (both survive blur, unlike a thresholded
    outline) and is refined over a small grid of scales, sub-pixel shifts and softness (0-2 passes of a 3x3
    binomial blur: generated shapes have soft edges and rounded corners, and a sharp template would call every
    soft square a circle).
    """
    ys, xs = torch.nonzero(soft > 0.05, as_tuple=True)
    y0, x0 = int(ys.min()) - 3, int(xs.min()) - 3
    win = F.pad(soft, (3, 3, 3, 3))[y0 + 3:int(ys.max()) + 7, x0 + 3:int(xs.max()) + 7]  # 3 px margin
    h, w = win.shape
    gy, gx = torch.arange(h) + 0.5, torch.arange(w) + 0.5  # pixel centres
    mass = win.sum()
    cx, cy = (win.sum(0) * gx).sum() / mass, (win.sum(1) * gy).sum() / mass
    r = _SCALES[:, None] * (mass / _AREA).sqrt()  # (K, 3): half-extent per scale and shape
    sx, sy = torch.meshgrid(_SHIFTS, _SHIFTS, indexing="ij")
    px = gx[None, None, None, None, :] - (cx + sx.reshape(-1))[None, None, :, None, None]  # (1, 1, M, 1, W)
    py = (gy[None, None, None, :, None] - (cy + sy.reshape(-1))[None, None, :, None, None]
          + (_CENTROID_DY * r)[..., None, None, None])  # (K, 3, M, H, 1): box centre above the centroid
    shape = torch.arange(3)[None, :, None, None, None]
    cover = (0.5 - signed_distance(shape, px, py, r[..., None, None, None])).clamp(0, 1)  # (K, 3, M, H, W)
    levels = [cover]
    for _ in range(2):
        flat = F.pad(levels[-1].reshape(-1, 1, h, w), (1, 1, 1, 1))
        levels.append(F.conv2d(flat, _BLUR).reshape(cover.shape))
    cover = torch.stack(levels)  # (L, K, 3, M, H, W)
    iou = torch.minimum(cover, win).sum((-1, -2)) / torch.maximum(cover, win).sum((-1, -2))
    return iou.amax(dim=(0, 1, 3))  # (3,)


def detect(images: torch.Tensor) -> list[list[DetectedObject]]:
    """images (B, 3, H, W) in [0, 1] -> the objects found in each image."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"detect expects images (B, 3, H, W), got {tuple(images.shape)}")
    alpha, resid = blend_weights(images)
    labels = _labels(alpha, resid)
    comps = components(labels)
    # an object's soft extent: its colour's weight on its own pixels and on unlabelled rim pixels the same
    # colour explains (the anti-aliased or blurred edge), never on another object's pixels
    explained = alpha * (resid <= MAX_RESIDUAL)  # (B, H, W, C)
    min_area = MIN_AREA_FRAC * images.shape[2] * images.shape[3]
    out: list[list[DetectedObject]] = []
    for b in range(images.shape[0]):
        objs = []
        ids, counts = torch.unique(comps[b], return_counts=True)
        for cid, n in zip(ids.tolist(), counts.tolist()):
            if cid < 0 or n < min_area:
                continue
            mask = comps[b] == cid
            c = int(labels[b][mask][0])
            rim = (labels[b] < 0) & (F.max_pool2d(mask[None].float(), 3, 1, 1)[0] > 0)
            fit = template_fit(explained[b, :, :, c] * (mask | rim))
            ys, xs = torch.nonzero(mask, as_tuple=True)
            box = (float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1)
            objs.append(DetectedObject(SHAPES[int(fit.argmax())], COLORS[c], box, float(n), float(fit.max())))
        out.append(objs)
    return out
