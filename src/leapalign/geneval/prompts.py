"""GenEval's prompt metadata: the packaged `evaluation_metadata.jsonl` and a parser of GenEval's prompt
templates into the same metadata.

The packaged file is GenEval's own (djghosh13/geneval, prompts/evaluation_metadata.jsonl at commit af4902f,
MIT licence, copied unchanged with its LICENSE beside it): 553 prompts, one JSON object per line,
{"tag", "include": [{"class", "count", "color"?, "position"?: [relation, entry index]}], "exclude"?, "prompt"}.

The templates (prompts/create_prompts.py there) are exactly these; "a"/"an" are both accepted:
  single_object  a photo of a X
  two_object     a photo of a X and a Y
  counting       a photo of two|three|four Xs          (exclude: count + 1 of X)
  colors         a photo of a COLOR X
  position       a photo of a X RELATION a Y           (include: Y, then X with position [RELATION, 0])
  color_attr     a photo of a COLOR X and a COLOR Y
"""

from __future__ import annotations

import json
from pathlib import Path

from leapalign.geneval.rules import COLORS, RELATIONS, TASKS

METADATA_PATH = Path(__file__).resolve().parents[1] / "assets" / "geneval" / "evaluation_metadata.jsonl"
NUMBERS = {"two": 2, "three": 3, "four": 4}
PREFIX = "a photo of "
# GenEval's 80 object names (COCO's classes in its spelling); used to undo its plurals ("buses" -> "bus" but
# "horses" -> "horse"). Names outside the list are singularised by dropping the final "s".
OBJECT_NAMES = tuple(
    name.replace("_", " ")
    for name in (
        "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
        "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
        "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
        "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
        "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop computer_mouse "
        "tv_remote computer_keyboard cell_phone microwave oven toaster sink refrigerator book clock vase "
        "scissors teddy_bear hair_drier toothbrush"
    ).split()
)


def load_metadata(path: str | Path | None = None) -> list[dict]:
    """GenEval metadata rows from a jsonl file (None = the packaged official file), checked for the fields
    the rules read; a missing file or a malformed line raises a one-line error naming it."""
    path = Path(path) if path is not None else METADATA_PATH
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata {path} not found (GenEval's prompts/evaluation_metadata.jsonl)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if row["tag"] not in TASKS or not row["include"] or not isinstance(row["prompt"], str):
                raise ValueError
            for req in row["include"] + row.get("exclude", []):
                if not isinstance(req["class"], str) or int(req["count"]) < 1:
                    raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}:{number}: not a GenEval metadata row: {line[:60]}") from None
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no GenEval metadata rows")
    return rows


def _singular(word: str, names: tuple[str, ...]) -> str:
    """Undo GenEval's plural (+"es" after a final "s", else +"s"), preferring a known object name."""
    candidates = [word[:-2]] if word.endswith("ses") else []
    candidates += [word[:-1]] if word.endswith("s") else []
    for candidate in candidates:
        if candidate in names:
            return candidate
    if not candidates:
        raise ValueError(f"{word!r} is not a plural")
    return candidates[-1]


def _object(phrase: str, prompt: str) -> tuple[str | None, str]:
    """'a red car' -> ('red', 'car'); 'an orange' -> (None, 'orange'): a colour word followed by nothing is
    the object itself (GenEval has the class "orange")."""
    article, _, rest = phrase.partition(" ")
    if article not in ("a", "an") or not rest.strip():
        raise ValueError(f"cannot parse {prompt!r}: expected 'a'/'an' before {phrase!r}")
    first, _, tail = rest.partition(" ")
    if first in COLORS and tail:
        return first, tail
    return None, rest


def parse_prompt(prompt: str, names: tuple[str, ...] = OBJECT_NAMES) -> dict:
    """GenEval metadata for a prompt written in one of GenEval's templates (see the module docstring).

    names: known object names, only used to undo plurals ("buses" -> "bus"). Raises ValueError, naming the
    templates, for anything else.
    """
    templates = "'a photo of a X', '... two|three|four Xs', '... a X and a Y', '... a COLOR X', " \
        "'... a X left of|right of|above|below a Y', '... a COLOR X and a COLOR Y'"
    text = " ".join(prompt.strip().split())
    if not text.startswith(PREFIX):
        raise ValueError(f"cannot parse {prompt!r}: GenEval prompts read {templates}")
    body = text[len(PREFIX):]
    number, _, plural = body.partition(" ")
    if number in NUMBERS and plural:
        name = _singular(plural, names)
        count = NUMBERS[number]
        return {"tag": "counting", "include": [{"class": name, "count": count}],
                "exclude": [{"class": name, "count": count + 1}], "prompt": prompt}
    for relation in RELATIONS:
        left, sep, right = body.partition(f" {relation} ")
        if sep:
            (color_a, a), (color_b, b) = _object(left, prompt), _object(right, prompt)
            if color_a or color_b:
                raise ValueError(f"cannot parse {prompt!r}: GenEval's position prompts have no colours")
            return {"tag": "position", "include": [{"class": b, "count": 1},
                                                   {"class": a, "count": 1, "position": [relation, 0]}],
                    "prompt": prompt}
    parts = body.split(" and ")
    if len(parts) > 2:
        raise ValueError(f"cannot parse {prompt!r}: GenEval prompts name at most two objects")
    objects = [_object(part, prompt) for part in parts]
    if len(objects) == 1:
        color, name = objects[0]
        if color is None:
            return {"tag": "single_object", "include": [{"class": name, "count": 1}], "prompt": prompt}
        return {"tag": "colors", "include": [{"class": name, "count": 1, "color": color}], "prompt": prompt}
    if all(color is None for color, _ in objects):
        return {"tag": "two_object", "include": [{"class": n, "count": 1} for _, n in objects], "prompt": prompt}
    if any(color is None for color, _ in objects):
        raise ValueError(f"cannot parse {prompt!r}: colour both objects or neither, as GenEval's templates do")
    return {"tag": "color_attr", "include": [{"class": n, "count": 1, "color": c} for c, n in objects],
            "prompt": prompt}
