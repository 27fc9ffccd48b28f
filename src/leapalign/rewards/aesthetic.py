"""LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor): an MLP head on unit-norm
CLIP ViT-L/14 image embeddings, predicting a 1-10 aesthetic rating. The prompt is ignored.

Files: the head `sac+logos+ava1-l14-linearMSE.pth` from
https://github.com/christophschuhmann/improved-aesthetic-predictor, and the CLIP ViT-L/14 backbone in
transformers format (https://huggingface.co/openai/clip-vit-large-patch14), taken from the head's folder when
it holds a config.json, else from the hub.
"""

from __future__ import annotations

import torch
from torch import nn

from leapalign.rewards.base import FrozenReward, check_inputs, freeze
from leapalign.rewards.clip import ClipReward, load_clip_model
from leapalign.rewards.files import find_file, find_folder, load_state_dict, require_keys

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor"
CLIP_REPO = "openai/clip-vit-large-patch14"
# Linear layers of the official MLP; the gaps (1, 3, 5) are its Dropout layers, so the indices match the file.
HEAD_LINEARS = (0, 2, 4, 6, 7)


def preference_head(state: dict[str, torch.Tensor], prefix: str = "layers.") -> nn.Sequential:
    """The aesthetic/ImageReward MLP (Linear x5, no activations, dropout off) built from and loaded with
    `state` (keys `{prefix}{0,2,4,6,7}.{weight,bias}`): (B, D) -> (B, 1)."""
    layers: list[nn.Module] = []
    for i in range(HEAD_LINEARS[-1] + 1):
        if i in HEAD_LINEARS:
            out_dim, in_dim = state[f"{prefix}{i}.weight"].shape
            layers.append(nn.Linear(in_dim, out_dim))
        else:
            layers.append(nn.Identity())  # Dropout in the official head; a no-op in eval
    head = nn.Sequential(*layers)
    head.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    return head


class AestheticReward(FrozenReward):
    """reward = MLP(normalise(CLIP image embedding)), (B,) float32; prompts are ignored."""

    def __init__(self, clip: ClipReward, head: nn.Sequential, *, name: str = "aesthetic"):
        super().__init__()
        embed_dim = clip.model.config.projection_dim
        if head[0].in_features != embed_dim:
            raise ValueError(
                f"aesthetic head takes {head[0].in_features}-d embeddings but the CLIP backbone gives {embed_dim}-d; "
                f"use CLIP ViT-L/14 ({CLIP_REPO}) with {HEAD_FILE}"
            )
        self.clip = clip
        self.head = head
        self.name = name
        freeze(self)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], prompts (B,) (unused) -> rewards (B,) float32."""
        check_inputs(images, prompts)
        embeds = self.clip.image_features(images)  # (B, D) unit norm, float32
        return self.head(embeds.to(self.clip.dtype)).float().squeeze(-1)

    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device="cpu", dtype: torch.dtype = torch.float32):
        """path: the head file or a folder holding it (and optionally the CLIP ViT-L/14 transformers files)."""
        file = find_file(path, [HEAD_FILE], None, "aesthetic", url=HEAD_URL)
        state = load_state_dict(file)
        require_keys(state, [f"layers.{i}.weight" for i in HEAD_LINEARS], file, f"the aesthetic MLP head ({HEAD_FILE})")
        clip_model = load_clip_model(find_folder(str(file), ["config.json"], CLIP_REPO), CLIP_REPO, "aesthetic CLIP")
        clip = ClipReward(clip_model, tokenizer=None, name="aesthetic-clip")
        return cls(clip, preference_head(state), name="aesthetic").to(device=device, dtype=dtype)
