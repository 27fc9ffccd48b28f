"""Sample grids a person can read: one PNG per GenEval category, images upscaled 4x (nearest neighbour), the
caption above each column and the model's name at each row; every column is one caption with one noise, the
same for every row."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw

SCALE = 4
PAD = 6
LABEL_W = 150
CAPTION_LINES = 4


def category_grid(rows: dict[str, torch.Tensor], captions: list[str], path: Path) -> Path:
    """rows: name -> images (C, 3, H, W) uint8, column c of every row from the same caption and noise."""
    first = next(iter(rows.values()))
    c, _, h, w = first.shape
    cell_w, cell_h = w * SCALE, h * SCALE
    wrap = max(8, cell_w // 6)
    head = 12 * CAPTION_LINES + PAD
    canvas = Image.new("RGB", (LABEL_W + c * (cell_w + PAD) + PAD, head + len(rows) * (cell_h + PAD) + PAD),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(captions):
        lines = textwrap.wrap(text.removeprefix("a photo of "), wrap)[:CAPTION_LINES]
        draw.multiline_text((LABEL_W + PAD + j * (cell_w + PAD), PAD // 2), "\n".join(lines), fill="black",
                            spacing=1)
    for i, (name, images) in enumerate(rows.items()):
        y = head + i * (cell_h + PAD)
        draw.text((PAD, y + cell_h // 2 - 6), name, fill="black")
        for j in range(c):
            array = images[j].permute(1, 2, 0).numpy()
            tile = Image.fromarray(array).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (LABEL_W + PAD + j * (cell_w + PAD), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
