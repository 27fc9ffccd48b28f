"""A differentiable GenEval-style reward from an open-vocabulary detector (transformers' OWLv2).

The prompt is parsed with GenEval's templates (geneval/prompts.py); a prompt outside them raises a ValueError
(no silent fallback: a presence-only score of the whole phrase would reward something other than what the
prompt asks, and CLIP or a composite with it is the better reward for free-form prompts). Each clause of
the metadata gives terms in [0, 1]; with s_i = sigmoid(logit of box i for a phrase) over the P boxes:

  presence  max_i s_i                                               (every include entry)
  count     1 / (1 + (c - n)^2), c = sum_i w_i over the K most confident boxes, w_i = s_i times a soft NMS
            factor prod_{j ranked above i} (1 - w_j IoU_ij), so that overlapping boxes of one object count once
  colour    sum_i a_i softmax_c(logit_i("a c X"))[target] over GenEval's ten colours, a = softmax_i(logit_i("a X"))
            (GenEval's colour classifier, asked of the boxes where the object is)
  position  sigmoid((offset along the relation - margin x (size A + size B)) / temperature), with centres and
            sizes of A and B the a-weighted means of box centres and sizes, in units of the image side

reward = mean of the terms: the mean (unlike a product, GenEval's AND) keeps a gradient on every clause when
one of them is near zero. Images go through OWLv2's preprocessing in torch (pad to a square with grey 0.5,
antialiased bilinear resize, CLIP normalisation), so gradients reach the pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leapalign.geneval.prompts import parse_prompt
from leapalign.geneval.rules import COLORS
from leapalign.rewards.base import FrozenReward, check_inputs, freeze
from leapalign.rewards.files import find_file, load_state_dict, require_keys
from leapalign.rewards.preprocess import CLIP_MEAN, CLIP_STD, normalize

REPO = "google/owlv2-base-patch16-ensemble"
OWL_KEYS = ["owlv2.vision_model.embeddings.patch_embedding.weight", "class_head.dense0.weight",
            "box_head.dense0.weight"]


class DetectorReward(FrozenReward):
    """GenEval clauses scored softly by OWLv2; (B,) float32 in [0, 1]."""

    def __init__(self, model, tokenizer, *, top_k: int = 32, margin: float = 0.1, temperature: float = 0.05):
        super().__init__()
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.name = "detector"
        self.top_k, self.margin, self.temperature = top_k, margin, temperature
        self.image_size = model.config.vision_config.image_size
        self.max_length = model.config.text_config.max_position_embeddings
        self._text_cache: dict[str, torch.Tensor] = {}
        freeze(self)

    @property
    def device(self) -> torch.device:
        return self.model.class_head.dense0.weight.device

    @torch.no_grad()
    def query_embeds(self, phrases: list[str]) -> torch.Tensor:
        """phrases (Q,) -> OWLv2 query embeddings (Q, D), cached per phrase."""
        new = [p for p in dict.fromkeys(phrases) if p not in self._text_cache]
        if new:
            tok = self.tokenizer(new, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            out = self.model.owlv2.text_model(input_ids=tok["input_ids"].to(self.device),
                                              attention_mask=tok["attention_mask"].to(self.device))
            self._text_cache.update(zip(new, self.model.owlv2.text_projection(out.pooler_output)))
        return torch.stack([self._text_cache[p] for p in phrases])

    def detect(self, images: torch.Tensor, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> (logits (B, P, Q) float32, boxes (B, P, 4) x0 y0 x1 y1 in units of
        the image width/height), differentiable w.r.t. the images."""
        height, width = images.shape[-2:]
        side = max(height, width)
        x = F.pad(images.float(), (0, side - width, 0, side - height), value=0.5)  # OWLv2 pads bottom/right, grey
        x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        x = normalize(x, CLIP_MEAN, CLIP_STD).to(self.model.class_head.dense0.weight.dtype)  # (B, 3, S, S)
        feature_map = self.model.image_embedder(pixel_values=x)[0]  # (B, h, w, D)
        feats = feature_map.flatten(1, 2)  # (B, P, D)
        queries = self.query_embeds(phrases).to(feats.dtype)[None].expand(len(x), -1, -1)  # (B, Q, D)
        logits = self.model.class_predictor(feats, queries, None)[0].float()  # (B, P, Q)
        cx, cy, w, h = self.model.box_predictor(feats, feature_map).float().unbind(-1)  # (B, P) each, padded units
        sx, sy = side / width, side / height
        boxes = torch.stack([(cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy], -1)
        return logits, boxes

    def soft_count(self, logit: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """logit (P,), boxes (P, 4) -> soft number of distinct objects (scalar)."""
        s, order = logit.sigmoid().topk(min(self.top_k, len(logit)))
        iou = box_iou(boxes[order].detach())  # (K, K); boxes steer only which scores overlap
        weights: list[torch.Tensor] = []  # w_i = s_i prod_{j < i} (1 - w_j IoU_ij), built without in-place ops
        for i in range(len(s)):
            suppress = [1 - w * iou[i, j] for j, w in enumerate(weights)]
            weights.append(s[i] * torch.stack(suppress).prod() if suppress else s[i])
        return torch.stack(weights).sum()

    def terms(self, logits: torch.Tensor, boxes: torch.Tensor, meta: dict, phrase_index: dict[str, int]) -> list:
        """One image: logits (P, Q), boxes (P, 4) -> the clause terms of its metadata (scalars in [0, 1])."""
        terms, places = [], []
        for req in meta["include"]:
            logit = logits[:, phrase_index[article(req["class"])]]
            attention = logit.softmax(0)  # (P,) where the object is
            terms.append(logit.sigmoid().max())
            if req["count"] > 1:
                terms.append(1 / (1 + (self.soft_count(logit, boxes) - req["count"]) ** 2))
            if "color" in req:
                columns = [phrase_index[article(f"{c} {req['class']}")] for c in COLORS]
                colour_logits = logits[:, columns]  # (P, 10)
                terms.append((attention * colour_logits.softmax(-1)[:, COLORS.index(req["color"])]).sum())
            centre = (attention[:, None] * (boxes[:, :2] + boxes[:, 2:]) / 2).sum(0)  # (2,)
            size = (attention[:, None] * (boxes[:, 2:] - boxes[:, :2]).abs()).sum(0)  # (2,)
            places.append((centre, size))
            if "position" in req:
                relation, target = req["position"]
                (ca, da), (cb, db) = places[-1], places[target]
                axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[relation]
                gap = sign * (ca[axis] - cb[axis]) - self.margin * (da[axis] + db[axis])
                terms.append(torch.sigmoid(gap / self.temperature))
        return terms

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], prompts (B,) in GenEval's templates -> rewards (B,) float32 in [0, 1]."""
        check_inputs(images, prompts)
        metas = [parse_prompt(p) for p in prompts]
        phrases = list(dict.fromkeys(p for meta in metas for p in phrases_of(meta)))
        logits, boxes = self.detect(images, phrases)
        index = {p: i for i, p in enumerate(phrases)}
        return torch.stack([torch.stack(self.terms(lg, bx, meta, index)).mean()
                            for lg, bx, meta in zip(logits, boxes, metas)])

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device="cpu", dtype: torch.dtype = torch.float32):
        """OWLv2 from a transformers folder (config.json + model.safetensors + tokenizer) or hub id; default
        google/owlv2-base-patch16-ensemble."""
        from transformers import Owlv2Config, Owlv2ForObjectDetection

        from leapalign.rewards.clip import load_tokenizer

        what = "detector reward (OWLv2)"
        config = find_file(path, ["config.json"], REPO, what)
        weights = find_file(path, ["model.safetensors", "pytorch_model.bin"], REPO, what)
        state = load_state_dict(weights)
        require_keys(state, OWL_KEYS, weights, f"a transformers OWLv2 checkpoint ({what})")
        model = Owlv2ForObjectDetection(Owlv2Config.from_json_file(str(config)))
        # unexpected keys (legacy buffers such as position_ids) are ignored; a missing weight is an error
        missing = model.load_state_dict(state, strict=False).missing_keys
        if missing:
            raise ValueError(f"{weights} is not a complete OWLv2 checkpoint: it lacks {missing[0]!r}")
        tokenizer = load_tokenizer(path, REPO, what)
        return cls(model.to(device=device, dtype=dtype), tokenizer)


def article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def phrases_of(meta: dict) -> list[str]:
    """The detector queries a metadata row needs: "a X" per object, and "a C X" for all ten colours C of an
    object with a colour clause."""
    out = []
    for req in meta["include"]:
        out.append(article(req["class"]))
        if "color" in req:
            out += [article(f"{c} {req['class']}") for c in COLORS]
    return out


def box_iou(boxes: torch.Tensor) -> torch.Tensor:
    """boxes (K, 4) x0 y0 x1 y1 -> pairwise IoU (K, K)."""
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)
    return inter / (area[:, None] + area[None, :] - inter + 1e-9)
