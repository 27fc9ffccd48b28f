"""GenEval's evaluator on transformers models: Mask2Former (COCO instance segmentation) -> Detections, CLIP
zero-shot colour of each masked object crop, then rules.evaluate_image.

Mirrors djghosh13/geneval evaluation/evaluate_images.py (mmdetection Mask2Former Swin-S + open_clip ViT-L-14
"openai") with these choices, each following mmdetection's Mask2Former inference where GenEval relies on it:
- input: bilinear resize to a short side of 800 (long side <= 1333), normalised with the checkpoint's
  preprocessor statistics, zero-padded bottom/right to a multiple of 32;
- instances: the top `num_queries` (class, query) pairs by softmax score, score x mean mask probability
  inside the mask, mask = logit > 0 after upsampling to the padded input, cropping and resizing to the image,
  box = the mask's extent (x1, y1 exclusive, as mmdetection's mask2bbox);
- colour: the image composited over GenEval's grey background (#999) outside the mask, cropped to the box,
  CLIP-preprocessed, and classified over GenEval's ten colours with its three templates per colour
  ("a photo of a {c} {object}", "a photo of a {c}-colored {object}", "a photo of a {c} object"), embeddings
  averaged per colour as clip_benchmark's zero_shot_classifier does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from leapalign.geneval.rules import COLORS, Detection, evaluate_image
from leapalign.rewards.preprocess import clip_preprocess

COLOR_TEMPLATES = ("a photo of a {c} {o}", "a photo of a {c}-colored {o}", "a photo of a {c} object")
# transformers' COCO id2label spellings -> GenEval's object names (the other 77 classes agree).
COCO_TO_GENEVAL = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}
GREY = 0x99 / 255  # GenEval's default bgcolor "#999"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GenEvalDetector:
    """Detections with masks and colours for images (B, 3, H, W) in [0, 1]; `evaluate` applies GenEval's rules.

    detector: a transformers Mask2FormerForUniversalSegmentation (COCO instances); clip: a ClipReward (its
    image and cached text features are reused for colours); min_score: detections at or below it are dropped
    before the rules (GenEval's lowest threshold is 0.3), which keeps at most a few masks per image in memory.
    """

    def __init__(self, detector, clip, *, short_side: int = 800, long_side: int = 1333,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 min_score: float = 0.3):
        self.detector = detector.eval().requires_grad_(False)
        self.clip = clip
        self.short_side, self.long_side = short_side, long_side
        self.mean, self.std, self.min_score = mean, std, min_score
        id2label = detector.config.id2label
        self.labels = [COCO_TO_GENEVAL.get(id2label[i], id2label[i]) for i in range(len(id2label))]
        self._classifiers: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.detector.parameters()).device

    def _input(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) in [0, 1] -> padded, normalised detector input and the unpadded resized (h, w)."""
        height, width = images.shape[-2:]
        scale = min(self.short_side / min(height, width), self.long_side / max(height, width))
        h, w = int(height * scale + 0.5), int(width * scale + 0.5)  # mmcv's rescale_size rounding
        x = F.interpolate(images.float(), size=(h, w), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        pad_h, pad_w = -h % 32, -w % 32
        return F.pad(x, (0, pad_w, 0, pad_h)), (h, w)  # (B, 3, h + pad_h, w + pad_w)

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[list[Detection]]:
        """Per image: detections scoring above min_score, most confident first, with masks; colour None."""
        dtype = next(self.detector.parameters()).dtype
        height, width = images.shape[-2:]
        x, (h, w) = self._input(images.to(self.device))
        out = self.detector(pixel_values=x.to(dtype))
        class_logits = out.class_queries_logits.float()  # (B, Q, K + 1), last = no object
        mask_logits = out.masks_queries_logits.float()  # (B, Q, h', w') at 1/4 of the padded input
        num_queries, num_classes = class_logits.shape[1], class_logits.shape[2] - 1
        results = []
        for cls_logit, mask_logit in zip(class_logits, mask_logits):
            scores = cls_logit.softmax(-1)[:, :-1].flatten()  # (Q * K,)
            top, index = scores.topk(num_queries)
            keep = top > self.min_score
            top, index = top[keep], index[keep]
            if not len(index):
                results.append([])
                continue
            query, label = index // num_classes, index % num_classes
            masks = F.interpolate(mask_logit[query][None], size=x.shape[-2:], mode="bilinear", align_corners=False)
            masks = F.interpolate(masks[..., :h, :w], size=(height, width), mode="bilinear", align_corners=False)[0]
            binary = masks > 0  # (N, H, W)
            mask_score = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
            dets = [Detection(self.labels[lab], float(s), mask_box(m), None, m.cpu())
                    for lab, s, m in zip(label.tolist(), (top * mask_score).tolist(), binary)]
            results.append(sorted(dets, key=lambda d: -d.score))
        return results

    @torch.no_grad()
    def classify_colors(self, image: torch.Tensor, detections: list[Detection]) -> list[str]:
        """image (3, H, W) in [0, 1]; the GenEval colour of each detection (masked crop over grey, CLIP)."""
        if not detections:
            return []
        crops = []
        for det in detections:
            grey = torch.full_like(image, GREY)
            x = image if det.mask is None else torch.where(det.mask.to(image.device), image, grey)
            x0, y0, x1, y1 = (int(round(v)) for v in det.box)
            crop = x[:, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
            crops.append(clip_preprocess(crop[None], self.clip.image_size, dtype=self.clip.dtype))
        x = torch.cat(crops).to(self.device)  # (N, 3, S, S)
        pooled = self.clip.model.vision_model(pixel_values=x).pooler_output
        feats = F.normalize(self.clip.model.visual_projection(pooled).float(), dim=-1)  # (N, D)
        logits = torch.stack([f @ self._classifier(d.label).T for f, d in zip(feats, detections)])  # (N, C)
        return [COLORS[i] for i in logits.argmax(-1).tolist()]

    def _classifier(self, name: str) -> torch.Tensor:
        """(len(COLORS), D) unit text embeddings: GenEval's three templates averaged per colour."""
        if name not in self._classifiers:
            rows = []
            for c in COLORS:
                text = self.clip.text_features([t.format(c=c, o=name) for t in COLOR_TEMPLATES]).mean(0)
                rows.append(F.normalize(text, dim=-1))
            self._classifiers[name] = torch.stack(rows).to(self.device)
        return self._classifiers[name]

    def with_colors(self, image: torch.Tensor, meta: dict, detections: list[Detection]) -> list[Detection]:
        """The detections with the colour of those whose class a clause of `meta` needs coloured (the rest
        None, as GenEval classifies only those); image (3, H, W) in [0, 1]."""
        needs_color = {req["class"] for req in meta["include"] if "color" in req}
        colored = [d for d in detections if d.label in needs_color]
        colors = dict(zip(map(id, colored), self.classify_colors(image, colored)))
        return [Detection(d.label, d.score, d.box, colors.get(id(d)), d.mask) for d in detections]

    def evaluate(self, images: torch.Tensor, metadata: list[dict], **rules) -> list[dict]:
        """images (B, 3, H, W) in [0, 1] with one GenEval metadata row each -> per image {"tag", "prompt",
        "correct", "reason", "detections": {class: [[x0, y0, x1, y1, score, colour], ...]}}; `rules` are
        evaluate_image's keyword options (thresholds, margins)."""
        results = []
        for image, meta, dets in zip(images, metadata, self.detect(images)):
            dets = self.with_colors(image, meta, dets)
            correct, reason = evaluate_image(dets, meta, **rules)
            found: dict[str, list] = {}
            for d in dets:
                found.setdefault(d.label, []).append([*d.box, round(d.score, 4), d.color])
            results.append({"tag": meta["tag"], "prompt": meta["prompt"], "correct": correct, "reason": reason,
                            "detections": found})
        return results

    @classmethod
    def from_pretrained(cls, detector_path: str | Path, clip_path: str | Path, *, device="cpu",
                        dtype: torch.dtype = torch.float32, min_score: float = 0.3) -> GenEvalDetector:
        """Mask2Former from a local transformers folder (e.g. facebook/mask2former-swin-small-coco-instance)
        and CLIP from a local folder (openai/clip-vit-large-patch14, GenEval's ViT-L-14)."""
        import json

        from transformers import Mask2FormerForUniversalSegmentation

        from leapalign.rewards.clip import ClipReward

        folder = Path(detector_path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"GenEval detector: no config.json in {folder}; download a COCO instance Mask2Former, e.g. "
                "https://huggingface.co/facebook/mask2former-swin-small-coco-instance, and pass its folder")
        if not Path(clip_path).is_dir():
            raise FileNotFoundError(f"GenEval colours: {clip_path} is not a folder; download "
                                    "https://huggingface.co/openai/clip-vit-large-patch14 and pass its folder")
        detector = Mask2FormerForUniversalSegmentation.from_pretrained(str(folder)).to(device=device, dtype=dtype)
        stats = {}
        if (folder / "preprocessor_config.json").is_file():
            pre = json.loads((folder / "preprocessor_config.json").read_text())
            # statistics on the 0-255 scale (mmdetection style) are rescaled to our [0, 1] pixels
            stats = {k: tuple(v / 255 if max(pre[key]) > 1 else v for v in pre[key])
                     for k, key in (("mean", "image_mean"), ("std", "image_std")) if key in pre}
        clip = ClipReward.from_pretrained(str(clip_path), device=device, dtype=dtype)
        return cls(detector, clip, min_score=min_score, **stats)


def mask_box(mask: torch.Tensor) -> tuple[float, float, float, float]:
    """(H, W) bool -> (x0, y0, x1, y1) with exclusive x1, y1 (mmdetection's mask2bbox); zeros when empty."""
    cols, rows = mask.any(0).nonzero(), mask.any(1).nonzero()
    if len(cols) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
