"""ShapesWorld scenes: sampling layouts that satisfy a caption, and an anti-aliased torch renderer.

Rendering uses signed distances with a one-pixel linear coverage ramp (analytic anti-aliasing), so it is
deterministic, batched and cheap on any device. Scene sampling runs on the CPU with an explicit
torch.Generator, so a seed gives the same scenes on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from leapalign.shapes.prompts import BACKGROUND, COLORS, MAX_OBJECTS, PALETTE, SHAPES, Prompt

# Object half-extent as a fraction of the canvas side: 3.5-5.5 px on the default 32 px canvas. Three or four
# objects get the smaller half of the range so that a separated layout always exists.
SIZE_RANGE = (0.11, 0.17)
SIZE_RANGE_CROWDED = (0.11, 0.14)
GAP = 2.0  # px of clear background between bounding boxes: touching same-colour objects would merge
_RELATION_CODE = {None: 0, "left of": 1, "right of": 2, "above": 3, "below": 4}


@dataclass
class SceneBatch:
    """Scenes with up to MAX_OBJECTS objects each; unused slots have shape == -1.

    shapes:  (B, N) long, index into SHAPES or -1.
    colors:  (B, N) long, index into COLORS.
    centers: (B, N, 2) float, (x, y) in pixels from the top-left corner.
    radii:   (B, N) float, half-extent in pixels (a square's half side, a circle's radius).
    size:    canvas side in pixels.
    """

    shapes: torch.Tensor
    colors: torch.Tensor
    centers: torch.Tensor
    radii: torch.Tensor
    size: int

    def objects(self, b: int) -> list[tuple[str, str, float, float, float]]:
        """Scene b as (shape, colour, cx, cy, radius) tuples."""
        return [(SHAPES[int(s)], COLORS[int(c)], float(xy[0]), float(xy[1]), float(r))
                for s, c, xy, r in zip(self.shapes[b], self.colors[b], self.centers[b], self.radii[b]) if s >= 0]


def _prompt_slots(p: Prompt, g: torch.Generator) -> tuple[list[int], list[int]]:
    """Shape and colour indices of the objects a caption asks for; free colours are drawn at random."""
    shapes = [SHAPES.index(p.shapes[0])] * p.count if p.category == "counting" else [SHAPES.index(s) for s in p.shapes]
    colors = []
    named = list(p.colors) * p.count if p.category == "counting" else list(p.colors)
    for c in named:
        colors.append(COLORS.index(c) if c else int(torch.randint(len(COLORS), (1,), generator=g)))
    return shapes, colors


def _valid(centers: torch.Tensor, radii: torch.Tensor, active: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """centers (B, K, N, 2), radii (B, N), active (B, N) bool, rel (B,) codes -> (B, K) bool layout is valid."""
    d = (centers[:, :, :, None, :] - centers[:, :, None, :, :]).abs()  # (B, K, N, N, 2)
    need = (radii[:, :, None] + radii[:, None, :] + GAP)[:, None]  # (B, 1, N, N)
    apart = (d[..., 0] >= need) | (d[..., 1] >= need)
    pair = active[:, None, :, None] & active[:, None, None, :]
    eye = torch.eye(centers.shape[2], dtype=torch.bool)
    ok = (apart | ~pair | eye).all(-1).all(-1)  # (B, K)
    # Position captions: the offset from object 1 to object 0 must point mostly along the named direction
    # (|along| >= 2 |across|), well inside GenEval's relation rule.
    dx = centers[:, :, 0, 0] - centers[:, :, 1, 0]
    dy = centers[:, :, 0, 1] - centers[:, :, 1, 1]
    r = rel[:, None]
    rel_ok = ((r == 0) | ((r == 1) & (-dx >= 2 * dy.abs())) | ((r == 2) & (dx >= 2 * dy.abs()))
              | ((r == 3) & (-dy >= 2 * dx.abs())) | ((r == 4) & (dy >= 2 * dx.abs())))
    return ok & rel_ok


def sample_scenes(prompts: list[Prompt], generator: torch.Generator, size: int = 32) -> SceneBatch:
    """One random scene per prompt that satisfies it exactly (only the named objects are drawn).

    generator: a CPU torch.Generator; the same seed gives the same scenes.
    """
    if size < 16:
        raise ValueError(f"canvas size must be >= 16 px, got {size}")
    if generator.device.type != "cpu":
        raise ValueError("sample_scenes needs a CPU torch.Generator (scenes must not depend on the device)")
    b = len(prompts)
    shapes = torch.full((b, MAX_OBJECTS), -1, dtype=torch.long)
    colors = torch.zeros((b, MAX_OBJECTS), dtype=torch.long)
    rel = torch.tensor([_RELATION_CODE[p.relation] for p in prompts], dtype=torch.long)
    for i, p in enumerate(prompts):
        s, c = _prompt_slots(p, generator)
        shapes[i, : len(s)] = torch.tensor(s)
        colors[i, : len(c)] = torch.tensor(c)
    active = shapes >= 0
    crowded = active.sum(1, keepdim=True) >= 3
    lo = torch.where(crowded, SIZE_RANGE_CROWDED[0], SIZE_RANGE[0]) * size
    hi = torch.where(crowded, SIZE_RANGE_CROWDED[1], SIZE_RANGE[1]) * size
    radii = lo + (hi - lo) * torch.rand((b, MAX_OBJECTS), generator=generator)
    centers = torch.zeros((b, MAX_OBJECTS, 2))
    todo = torch.arange(b)
    k = 8  # candidate layouts per scene in the first round; one or two objects almost always fit at once
    while todo.numel():  # rejection sampling, vectorised over the candidates
        r = radii[todo]
        u = torch.rand((todo.numel(), k, MAX_OBJECTS, 2), generator=generator)
        lo_c = (r + 1.0)[:, None, :, None]
        cand = lo_c + u * (size - 2 * lo_c)  # (n, K, N, 2): objects stay 1 px inside the canvas
        ok = _valid(cand, r, active[todo], rel[todo])
        found = ok.any(1)
        first = ok.float().argmax(1)
        centers[todo[found]] = cand[found, first[found]]
        todo = todo[~found]
        k = 64
    radii = torch.where(active, radii, torch.zeros_like(radii))
    return SceneBatch(shapes=shapes, colors=colors, centers=centers, radii=radii, size=size)


def signed_distance(shape: torch.Tensor, px: torch.Tensor, py: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per-pixel signed distance (negative inside) of each object; px, py (B, N, H, W) relative to the centre."""
    circle = torch.sqrt(px ** 2 + py ** 2) - r
    square = torch.maximum(px.abs(), py.abs()) - r
    # Upward triangle with apex (0, -r) and base y = +r of half-width r: sides satisfy 2|x| = y + r.
    triangle = torch.maximum(py - r, (2 * px.abs() - (py + r)) / math.sqrt(5.0))
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def render(scenes: SceneBatch, device: torch.device | str = "cpu") -> torch.Tensor:
    """Scenes -> images (B, 3, S, S) in [0, 1] on a white background, objects painted in slot order."""
    s = scenes.size
    coords = torch.arange(s, device=device, dtype=torch.float32) + 0.5  # pixel centres
    centers = scenes.centers.to(device)
    px = coords[None, None, None, :] - centers[..., 0, None, None]  # (B, N, 1, S)
    py = coords[None, None, :, None] - centers[..., 1, None, None]  # (B, N, S, 1)
    px, py = torch.broadcast_tensors(px, py)  # (B, N, S, S)
    shape = scenes.shapes.to(device)[..., None, None]
    sd = signed_distance(shape, px, py, scenes.radii.to(device)[..., None, None])
    cover = (0.5 - sd).clamp(0, 1) * (shape >= 0)  # (B, N, S, S): one-pixel linear ramp = anti-aliasing
    palette = torch.tensor([PALETTE[c] for c in COLORS], device=device)
    rgb = palette[scenes.colors.to(device)]  # (B, N, 3)
    img = torch.tensor(BACKGROUND, device=device)[None, :, None, None].expand(len(scenes.shapes), 3, s, s)
    for n in range(scenes.shapes.shape[1]):
        a = cover[:, n, None]  # (B, 1, S, S)
        img = img * (1 - a) + rgb[:, n, :, None, None] * a
    return img
