"""ShapesWorld vocabulary and captions: GenEval's six categories over circles, squares and triangles.

A `Prompt` is the structured meaning of one caption; `caption()` writes it with GenEval's templates and
`parse_prompt()` reads it back. `prompt_splits()` gives the alignment-training and held-out evaluation sets,
which are disjoint in their compositions (not only in their strings: "A left of B" and "B right of A" are one
composition and always land on the same side); `validation_pool()` adds the validation-only compositions of the
categories that are never trained on, so that tuning sees every category.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations

SHAPES = ("circle", "square", "triangle")
# Saturated colours far apart in RGB and from the white background, so that anti-aliased edges (a blend with
# white) still sit closest to their own colour's line; see evaluator.segment.
PALETTE = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.10, 0.62, 0.18),
    "blue": (0.12, 0.28, 0.88),
    "yellow": (0.96, 0.80, 0.08),
    "purple": (0.58, 0.18, 0.74),
    "cyan": (0.05, 0.78, 0.84),
}
COLORS = tuple(PALETTE)
BACKGROUND = (1.0, 1.0, 1.0)
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBERS = {2: "two", 3: "three", 4: "four"}
MAX_OBJECTS = 4


@dataclass(frozen=True)
class Prompt:
    """The meaning of one caption.

    shapes:   the named objects, 1 (single_object, counting, colors) or 2 (two_object, position, color_attr).
    colors:   a colour name per named object, or None where the caption leaves it free.
    count:    number of objects for counting (2-4); 1 per named object otherwise.
    relation: position only: where shapes[0] lies relative to shapes[1] (one of RELATIONS).
    """

    category: str
    shapes: tuple[str, ...]
    colors: tuple[str | None, ...]
    count: int = 1
    relation: str | None = None

    @property
    def text(self) -> str:
        return caption(self)

    @property
    def composition(self) -> tuple:
        """A key equal for captions that describe the same scenes (so splits can be disjoint in meaning)."""
        if self.category == "position":
            if self.relation in ("right of", "below"):
                return ("position", self.shapes[::-1], OPPOSITE[self.relation])
            return ("position", self.shapes, self.relation)
        if self.category in ("two_object", "color_attr"):
            return (self.category, tuple(sorted(zip(self.shapes, self.colors), key=str)))
        return (self.category, self.shapes, self.colors, self.count, self.relation)


def _noun(shape: str, color: str | None) -> str:
    return f"a {color} {shape}" if color else f"a {shape}"


def caption(p: Prompt) -> str:
    """GenEval's templates, e.g. 'a photo of a red circle and a blue square'."""
    if p.category == "counting":
        return f"a photo of {NUMBERS[p.count]} {p.shapes[0]}s"
    if p.category == "position":
        return f"a photo of {_noun(p.shapes[0], None)} {p.relation} {_noun(p.shapes[1], None)}"
    return "a photo of " + " and ".join(_noun(s, c) for s, c in zip(p.shapes, p.colors))


_NOUN = rf"a (?:({'|'.join(COLORS)}) )?({'|'.join(SHAPES)})"
_PATTERNS = (
    ("counting", re.compile(rf"a photo of ({'|'.join(NUMBERS.values())}) ({'|'.join(SHAPES)})s")),
    ("position", re.compile(rf"a photo of a ({'|'.join(SHAPES)}) ({'|'.join(RELATIONS)}) a ({'|'.join(SHAPES)})")),
    ("pair", re.compile(rf"a photo of {_NOUN} and {_NOUN}")),
    ("single", re.compile(rf"a photo of {_NOUN}")),
)


def parse_prompt(text: str) -> Prompt:
    """Inverse of caption(); raises ValueError for text outside ShapesWorld's templates."""
    t = " ".join(text.lower().split())
    for kind, pattern in _PATTERNS:
        m = pattern.fullmatch(t)
        if m is None:
            continue
        g = m.groups()
        if kind == "counting":
            count = {v: k for k, v in NUMBERS.items()}[g[0]]
            return Prompt("counting", (g[1],), (None,), count=count)
        if kind == "position":
            return Prompt("position", (g[0], g[2]), (None, None), relation=g[1])
        if kind == "pair":
            colored = g[0] is not None or g[2] is not None
            return Prompt("color_attr" if colored else "two_object", (g[1], g[3]), (g[0], g[2]))
        return Prompt("colors" if g[0] else "single_object", (g[1],), (g[0],))
    raise ValueError(
        f"'{text}' is not a ShapesWorld caption; use GenEval's templates, e.g. 'a photo of a red circle and a "
        f"blue square', 'a photo of three triangles', 'a photo of a circle left of a square' (shapes {SHAPES}, "
        f"colours {COLORS})"
    )


def all_prompts(category: str) -> list[Prompt]:
    """Every caption of one category, in a fixed order."""
    if category == "single_object":
        return [Prompt(category, (s,), (None,)) for s in SHAPES]
    if category == "two_object":
        return [Prompt(category, pair, (None, None)) for pair in permutations(SHAPES, 2)]
    if category == "counting":
        return [Prompt(category, (s,), (None,), count=n) for s in SHAPES for n in NUMBERS]
    if category == "colors":
        return [Prompt(category, (s,), (c,)) for s in SHAPES for c in COLORS]
    if category == "position":
        return [Prompt(category, pair, (None, None), relation=r) for pair in permutations(SHAPES, 2)
                for r in RELATIONS]
    if category == "color_attr":
        return [Prompt(category, pair, cols) for pair in permutations(SHAPES, 2)
                for cols in permutations(COLORS, 2)]
    raise ValueError(f"unknown category '{category}'; valid: {', '.join(CATEGORIES)}")


# Categories with a handful of compositions measure transfer: alignment never trains on them, one composition of
# each is kept for validation (so that tuning sees every category) and the rest is held out. Position holds out
# HELDOUT_PER_AXIS compositions on each axis (left/right and above/below; 8 of its 12), so that held-out position
# accuracy is measured on both axes. The other categories keep about a third aside by a stable hash.
TRANSFER = ("single_object", "two_object")
HELDOUT_PER_AXIS = 4


def _digest(composition: tuple) -> bytes:
    return hashlib.sha256(repr(composition).encode()).digest()


@lru_cache(maxsize=1)
def _roles() -> dict[tuple, str]:
    """composition -> train, validation or heldout."""
    roles: dict[tuple, str] = {}
    for cat in CATEGORIES:
        comps = sorted({p.composition for p in all_prompts(cat)}, key=_digest)
        if cat in TRANSFER:
            roles.update({c: "validation" if i == 0 else "heldout" for i, c in enumerate(comps)})
        elif cat == "position":
            for axis in ("left of", "above"):
                on_axis = [c for c in comps if c[2] == axis]
                roles.update({c: "heldout" if i < HELDOUT_PER_AXIS else "train" for i, c in enumerate(on_axis)})
        else:
            roles.update({c: "heldout" if _digest(c)[0] % 3 == 0 else "train" for c in comps})
    return roles


def split_of(p: Prompt) -> str:
    """Which split a caption's composition belongs to: train, validation (tuning only) or heldout."""
    return _roles()[p.composition]


def prompt_splits() -> tuple[list[Prompt], list[Prompt]]:
    """(train, heldout): no composition appears in both; the validation-only compositions are in neither."""
    every = [p for c in CATEGORIES for p in all_prompts(c)]
    return [p for p in every if split_of(p) == "train"], [p for p in every if split_of(p) == "heldout"]


def validation_pool() -> list[Prompt]:
    """Captions that hyperparameter tuning may use: the training captions plus the validation-only compositions
    of the transfer categories; every category is represented, no held-out composition is."""
    every = [p for c in CATEGORIES for p in all_prompts(c)]
    return [p for p in every if split_of(p) in ("train", "validation")]


def train_prompts() -> list[str]:
    """Captions for alignment training (the reward is the only signal; compositions disjoint from held-out)."""
    return [p.text for p in prompt_splits()[0]]


def heldout_prompts(per_category: int | None = None) -> list[str]:
    """Held-out evaluation captions, grouped by category in CATEGORIES order.

    per_category: keep at most this many per category (evenly spread over the category's list), None = all.
    """
    held = prompt_splits()[1]
    out: list[str] = []
    for cat in CATEGORIES:
        items = [p.text for p in held if p.category == cat]
        if per_category is not None:
            if per_category < 1:
                raise ValueError(f"per_category must be >= 1 or None, got {per_category}")
            stride = max(1, len(items) // per_category)
            items = items[::stride][:per_category]
        out.extend(items)
    return out


def perturbations(p: Prompt) -> list[Prompt]:
    """Single-edit variants of a caption: another shape, colour, count or relation, or the two objects' colours
    or places swapped. Used as hard negatives for the reward model; some may still be true for a given scene
    (e.g. a new colour that the scene happens to have), so callers filter them against the scene."""
    out: list[Prompt] = []
    for i, shape in enumerate(p.shapes):
        for s in SHAPES:
            if s != shape and s not in p.shapes:
                out.append(Prompt(p.category, p.shapes[:i] + (s,) + p.shapes[i + 1:], p.colors, p.count, p.relation))
    if p.category in ("single_object", "colors"):
        out += [Prompt("colors", p.shapes, (c,)) for c in COLORS if c != p.colors[0]]
    if p.category == "color_attr":
        out += [Prompt(p.category, p.shapes, p.colors[::-1])]
        out += [Prompt(p.category, p.shapes, (c, p.colors[1])) for c in COLORS if c not in p.colors]
        out += [Prompt(p.category, p.shapes, (p.colors[0], c)) for c in COLORS if c not in p.colors]
    if p.category == "counting":
        out += [Prompt(p.category, p.shapes, p.colors, count=n) for n in NUMBERS if n != p.count]
    if p.category in ("position", "two_object"):
        rels = RELATIONS if p.category == "two_object" else (OPPOSITE[p.relation],)
        out += [Prompt("position", p.shapes, (None, None), relation=r) for r in rels]
        out += [Prompt("position", p.shapes[::-1], (None, None), relation=r) for r in rels]
    return out
