"""GenEval-style compositional evaluation: the task rules over neutral detection lists (rules.py), the prompt
metadata (prompts.py) and the real-model evaluator, Mask2Former + CLIP colours (evaluator.py)."""

from leapalign.geneval.rules import COLORS, RELATIONS, TASKS, Detection, evaluate_image, relative_position, summarize

__all__ = ["COLORS", "RELATIONS", "TASKS", "Detection", "evaluate_image", "relative_position", "summarize"]
