"""ShapesWorld's scene parser and the soft GenEval score computed from its maps (the `shapes-compose` reward).

The parser is a small fully convolutional network (a full-resolution stem, dilated residual blocks at half
resolution that see the whole canvas, a skip connection back to full resolution) with two per-pixel heads over
the 18 colour x shape classes:

    seg     (B, 1 + C*S, H, W)  softmax: background or the colour x shape class of the object under the pixel
    density (B, C, S, H, W) >= 0  each object contributes a small blob of total mass 1 at its centre, so the sum of
                                  a class's density is its soft object count (density-map counting); it is a
                                  sigmoid heatmap (peak 1 at a centre, CenterNet's) divided by a blob's mass,
                                  times the pixel's probability of that class in `seg`

`compose_score` reads a caption against those maps with GenEval's rules made soft, every term in [0, 1]:
presence = min(soft count, 1); an exact count = exp(-(soft count - k)^2 / (2 w^2)); colour-shape binding = the
presence of the coloured class itself (a red circle needs red-circle density, not red anywhere and a circle
anywhere); relative position = a sigmoid of the offset between the two shapes' density centroids past a margin,
times a sigmoid of the offset along the named axis exceeding the offset across it; and a purity term, the
Simpson index of the class mix on the parsed objects' pixels, which is 1 when each object is one class and falls
when an object is painted as a blend of classes (what a gradient attack on a per-class score tends to draw).
The score is the product of the terms. Nothing here reads the evaluator: its thresholds and geometry are its own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from leapalign.shapes.prompts import COLORS, SHAPES, parse_prompt
from leapalign.types import option

N_CLASSES = len(COLORS) * len(SHAPES)  # class index = colour * len(SHAPES) + shape
COUNT_WIDTH = 0.3  # std of the soft exact-count bump, in objects: one object off scores exp(-5.6) ~ 0.004
POSITION_MARGIN = 1.5  # px the centroids must be apart along the named direction before the sigmoid passes 0.5
POSITION_TEMPERATURE = 1.0  # px: sigmoid softness of the position terms
BLOB_STD = 1.0  # px: std of the Gaussian blob each object puts at its centre
BLOB_MASS = 2 * math.pi * BLOB_STD ** 2  # total of a peak-1 Gaussian of that std


@dataclass
class ParserConfig:
    image_size: int = option(32, "canvas side in pixels; other sizes are resized (antialiased) before parsing")
    width: int = option(24, "channels of every hidden layer")
    dilations: tuple[int, ...] = option((1, 2, 4, 1), "one residual 3x3 conv block per entry, at half resolution")

    def __post_init__(self) -> None:
        self.dilations = tuple(self.dilations)
        if self.width < 8 or not self.dilations:
            raise ValueError(f"parser width must be >= 8 and dilations non-empty, got {self.width}, {self.dilations}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ParserMaps:
    """seg (B, 1 + C*S, H, W) probabilities (channel 0 = background); density (B, C, S, H, W) >= 0."""

    seg: torch.Tensor
    density: torch.Tensor


class _Block(nn.Module):
    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(width, width, 1)
        self.norm = nn.GroupNorm(8, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.norm(self.conv1(x))))


class ShapesParser(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> ParserMaps."""

    def __init__(self, cfg: ParserConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.stem = nn.Conv2d(3, w, 3, padding=1)
        self.down = nn.Conv2d(w, w, 3, stride=2, padding=1)  # half resolution: a quarter of the compute
        self.blocks = nn.Sequential(*(_Block(w, d) for d in cfg.dilations))
        self.head = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, 1 + 2 * N_CLASSES, 1))
        # start with almost no density (sigmoid(-6) * 1024 px / BLOB_MASS ~ 0.4 per class), not ~80 per class
        nn.init.constant_(self.head[2].bias[1 + N_CLASSES:], -6.0)

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> seg logits (B, 1 + C*S, H, W) and centre-heatmap logits (B, C*S, H, W)."""
        s = self.cfg.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        low = F.silu(self.stem(images * 2 - 1))  # (B, W, S, S)
        mid = self.blocks(F.silu(self.down(low)))  # (B, W, S/2, S/2)
        out = self.head(torch.cat([low, F.interpolate(F.silu(mid), scale_factor=2.0, mode="bilinear")], 1))
        return out[:, : 1 + N_CLASSES], out[:, 1 + N_CLASSES:]

    def forward(self, images: torch.Tensor) -> ParserMaps:
        seg, dens = self.logits(images)
        b, _, h, w = dens.shape
        # a sigmoid heatmap trained with per-pixel BCE keeps its gradient where a softplus density trained by
        # regression collapsed to zero (measured: counts ~0 after 500 steps)
        probs = seg.softmax(1)
        # the density counts only where the segmentation sees the same class: an attack must fool both heads
        # at once (measured: PGD gain on false captions 0.219 -> 0.159 at eps 0.1, same weights)
        density = torch.sigmoid(dens) / BLOB_MASS * probs[:, 1:]
        return ParserMaps(probs, density.view(b, len(COLORS), len(SHAPES), h, w))


def _centroid(d: torch.Tensor) -> torch.Tensor:
    """d (B, H, W) >= 0 -> (B, 2) density-weighted (x, y) in pixels."""
    h, w = d.shape[-2:]
    ys = torch.arange(h, device=d.device, dtype=d.dtype) + 0.5
    xs = torch.arange(w, device=d.device, dtype=d.dtype) + 0.5
    mass = d.sum((-1, -2)).clamp_min(1e-6)
    return torch.stack([(d.sum(-2) * xs).sum(-1) / mass, (d.sum(-1) * ys).sum(-1) / mass], -1)


def purity(maps: ParserMaps) -> torch.Tensor:
    """(B,) Simpson index of the class mix per object pixel, averaged over the parsed objects' pixels."""
    fg = maps.seg[:, 1:]  # (B, C*S, H, W)
    weight = fg.sum(1)  # (B, H, W): probability the pixel belongs to some object
    q = fg / weight[:, None].clamp_min(1e-6)
    simpson = (q * q).sum(1)  # 1 for a single class, 1/18 for a uniform mix
    return (simpson * weight).sum((-1, -2)) / weight.sum((-1, -2)).clamp_min(1e-6)


_AXIS = {"left of": (0, -1.0), "right of": (0, 1.0), "above": (1, -1.0), "below": (1, 1.0)}


@lru_cache(maxsize=4096)
def _caption_code(prompt: str) -> tuple[int, int, int, int, int, int, int, float]:
    """A caption as numbers: (counting, position, shape0, shape1 or -1, colour0 or -1, colour1 or -1, count or
    axis, direction sign). Raises ValueError for text outside ShapesWorld's templates and for position captions
    naming one shape twice (two objects of one shape have one density centroid, so their order is unreadable)."""
    p = parse_prompt(prompt)
    shapes = [SHAPES.index(s) for s in p.shapes] + [-1]
    colors = [-1 if c is None else COLORS.index(c) for c in p.colors] + [-1]
    axis, sign = 0, 0.0
    if p.category == "position":
        if shapes[0] == shapes[1]:
            raise ValueError(f"'{prompt}': position captions must name two different shapes")
        axis, sign = _AXIS[p.relation]
    count = p.count if p.category == "counting" else axis
    return (int(p.category == "counting"), int(p.category == "position"), shapes[0], shapes[1], colors[0],
            colors[1], count, sign)


def caption_terms(maps: ParserMaps, prompts: list[str]) -> dict[str, torch.Tensor]:
    """The soft GenEval terms of each image's caption, each (B,) in [0, 1] (1 where a term does not apply):
    purity, object0 / object1 (presence of each named object), count (counting), position."""
    if maps.seg.shape[0] != len(prompts):
        raise ValueError(f"got {maps.seg.shape[0]} images but {len(prompts)} prompts")
    dev = maps.seg.device
    code = torch.tensor([_caption_code(p) for p in prompts], dtype=torch.float64)  # (B, 8)
    counting, position = code[:, 0].bool().to(dev), code[:, 1].bool().to(dev)
    s0, s1, c0, c1, num = (code[:, i].long().to(dev) for i in range(2, 7))
    sign = code[:, 7].to(dev, maps.seg.dtype)
    rows = torch.arange(len(prompts), device=dev)
    d = maps.density  # (B, C, S, H, W)
    counts = d.sum((-1, -2))  # (B, C, S)
    per_shape = counts.sum(1)  # (B, S)

    def presence(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # a bound colour uses only its own class's density: colour and shape must sit on the same object
        n = torch.where(c >= 0, counts[rows, c.clamp(min=0), s.clamp(min=0)], per_shape[rows, s.clamp(min=0)])
        return torch.where(s >= 0, n.clamp(max=1.0), torch.ones_like(n))

    n0 = per_shape[rows, s0]
    count = torch.exp(-((n0 - num) ** 2) / (2 * COUNT_WIDTH ** 2))
    cent = _centroid(d.sum(1).flatten(0, 1)).view(len(prompts), -1, 2)  # (B, S, 2): each shape's centroid
    a, b = cent[rows, s0], cent[rows, s1.clamp(min=0)]
    axis = num.clamp(0, 1)[:, None]
    along = sign * (a - b).gather(1, axis)[:, 0]
    across = (a - b).gather(1, 1 - axis)[:, 0].abs()
    pos = (torch.sigmoid((along - POSITION_MARGIN) / POSITION_TEMPERATURE)
           * torch.sigmoid((along - across) / POSITION_TEMPERATURE))
    one = torch.ones_like(n0)
    return {"purity": purity(maps),
            "object0": torch.where(counting, one, presence(s0, c0)),
            "object1": torch.where(counting, one, presence(s1, c1)),
            "count": torch.where(counting, count, one),
            "position": torch.where(position, pos, one)}


def compose_score(maps: ParserMaps, prompts: list[str]) -> torch.Tensor:
    """(B,) the product of each image's caption terms, in [0, 1]."""
    return torch.stack(list(caption_terms(maps, prompts).values())).prod(0)
