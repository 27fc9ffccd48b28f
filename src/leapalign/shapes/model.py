"""ShapesWorld networks: a word-level text encoder and a DiT-style rectified-flow transformer.

The flow model works in pixel space (latents are images scaled to [-1, 1], (B, 3, S, S)) and predicts the
velocity v = eps - x0 at sigma (sigma = 1 is noise). Blocks follow DiT (Peebles & Xie): adaLN-Zero modulation
from the timestep and the pooled caption, self-attention over patches, plus cross-attention to the caption
tokens (as in PixArt-alpha), so that word order can steer layout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from leapalign.shapes.prompts import COLORS, NUMBERS, RELATIONS, SHAPES
from leapalign.types import option

# Fixed vocabulary: every word ShapesWorld's templates use. <null> is the empty caption (classifier-free
# guidance); an unknown word is an error, never a silent <unk>.
VOCAB = ("<pad>", "<null>", "a", "photo", "of", "and", *SHAPES, *(s + "s" for s in SHAPES), *COLORS,
         *NUMBERS.values(), *sorted({w for r in RELATIONS for w in r.split()} - {"of"}))
MAX_TOKENS = 12


def tokenize(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> ids (B, MAX_TOKENS) long and mask (B, MAX_TOKENS) bool (True = real token). "" -> <null>."""
    index = {w: i for i, w in enumerate(VOCAB)}
    ids = torch.zeros((len(prompts), MAX_TOKENS), dtype=torch.long)
    for b, text in enumerate(prompts):
        words = text.lower().split() or ["<null>"]
        if len(words) > MAX_TOKENS:
            raise ValueError(f"caption '{text}' has {len(words)} words; ShapesWorld captions have at most "
                             f"{MAX_TOKENS}")
        for t, w in enumerate(words):
            if w not in index:
                raise ValueError(f"word '{w}' in '{text}' is not in ShapesWorld's vocabulary: {', '.join(VOCAB[2:])}")
            ids[b, t] = index[w]
    return ids, ids != 0


@dataclass
class TextEncoderConfig:
    dim: int = option(128, "token feature width")
    depth: int = option(2, "transformer layers")
    heads: int = option(4, "attention heads (dim must divide by it)")


class TextEncoder(nn.Module):
    """ids (B, L), mask (B, L) -> tokens (B, L, dim) and pooled (B, dim) (masked mean)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), cfg.dim)
        self.pos = nn.Parameter(torch.randn(MAX_TOKENS, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 4 * cfg.dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.layers = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, L, D)
        h = self.norm(self.layers(h, src_key_padding_mask=~mask))
        m = mask[..., None].to(h.dtype)
        return h, (h * m).sum(1) / m.sum(1).clamp(min=1)


@dataclass
class FlowModelConfig:
    image_size: int = option(32, "canvas side in pixels the model was trained at")
    patch: int = option(4, "patch side in pixels; tokens = (image_size / patch)^2")
    dim: int = option(128, "transformer width")
    depth: int = option(4, "DiT blocks")
    heads: int = option(4, "attention heads (dim must divide by it)")
    text: TextEncoderConfig = option(TextEncoderConfig(), "the caption encoder's shape")

    def __post_init__(self) -> None:
        if isinstance(self.text, dict):  # from a checkpoint's JSON
            self.text = TextEncoderConfig(**self.text)
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """sigma (B,) in [0, 1] -> sinusoidal features (B, dim) of 1000 sigma (DiT's frequency layout)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    args = 1000.0 * sigma.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(grid: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Fixed 2-D sin-cos position features (grid*grid, dim) in float32 on `device`, as DiT."""
    coords = torch.arange(grid, dtype=torch.float32, device=device)
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim // 4))
    ang_y = coords[:, None, None] * freqs  # (G, 1, D/4)
    ang_x = coords[None, :, None] * freqs  # (1, G, D/4)
    ang_y, ang_x = torch.broadcast_tensors(ang_y, ang_x)
    emb = torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], dim=-1)  # (G, G, D)
    return emb.reshape(grid * grid, dim)


_GELU_C = 2 * math.sqrt(2 / math.pi)  # gelu_tanh(x) = x sigmoid(C (x + A x^3)), since (1 + tanh(u)) / 2 = sigmoid(2 u)
_GELU_A = 0.044715


def _gelu_gate(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(C (x + A x^3)), written so that each step is one pass over a fresh buffer."""
    return torch.addcmul(x.new_full((), _GELU_C), x, x, value=_GELU_C * _GELU_A).mul_(x).sigmoid_()


class _GeluTanh(torch.autograd.Function):
    """F.gelu(x, approximate="tanh") in the sigmoid form: on CPU torch's tanh kernel is about 6x slower than its
    sigmoid kernel, which makes the tanh form a sixth of a ShapesDiT call. Same function (tests compare both in
    float64); the backward recomputes the gate from x rather than storing it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _gelu_gate(x).mul_(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = _gelu_gate(x)
        dz = (x * x).mul_(3 * _GELU_C * _GELU_A).add_(_GELU_C).mul_(x)  # x dz/dx
        return (1 - s).mul_(dz).add_(1).mul_(s).mul_(grad)  # d(x s(z))/dx = s (1 + x z' (1 - s))


class GeluTanh(nn.Module):
    """nn.GELU(approximate="tanh"), computed as `_GeluTanh`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GeluTanh.apply(x)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, q (B, H, N, d), k and v (B, H, M, d), mask (B, 1, 1, M) bool (True = attend).

    Written out rather than F.scaled_dot_product_attention: at these sizes (64 queries, 12-64 keys) it is as fast
    in float32 and under CPU bfloat16 autocast its backward is about 5x faster than the fused kernel's. The
    softmax runs in float32 at least, whatever the input dtype."""
    s = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1, dtype=torch.promote_types(s.dtype, torch.float32)).to(v.dtype) @ v


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, cross-attention to text, MLP; x (B, N, D), c (B, D), text (B, L, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_x = nn.LayerNorm(dim, eps=1e-6)
        self.q_cross = nn.Linear(dim, dim)
        self.kv_cross = nn.Linear(dim, 2 * dim)
        self.proj_cross = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), GeluTanh(), nn.Linear(4 * dim, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, H, N, D/H)

    def forward(self, x: torch.Tensor, c: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor):
        b, n, d = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)  # each (B, D)
        q, k, v = self.qkv(_modulate(self.norm1(x), sh1, sc1)).chunk(3, dim=-1)
        a = _attention(self._heads(q), self._heads(k), self._heads(v))  # (B, H, N, D/H)
        x = x + g1[:, None] * self.proj(a.transpose(1, 2).reshape(b, n, d))
        kc, vc = self.kv_cross(text).chunk(2, dim=-1)
        a = _attention(self._heads(self.q_cross(self.norm_x(x))), self._heads(kc), self._heads(vc),
                       text_mask[:, None, None, :])
        x = x + self.proj_cross(a.transpose(1, 2).reshape(b, n, d))
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), sh2, sc2))


class ShapesDiT(nn.Module):
    """The denoiser: x (B, 3, S, S) in [-1, 1] scale, sigma (B,), caption features -> velocity (B, 3, S, S)."""

    def __init__(self, cfg: FlowModelConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dim, cfg.patch
        self.patch_in = nn.Linear(3 * p * p, d)
        self.text_in = nn.Linear(cfg.text.dim, d)
        self.t_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, 3 * p * p)
        for m in (self.ada_out[1], self.out):  # DiT zero-initialises the final layer
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                pooled: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W); sigma (B,); text (B, L, Dt); text_mask (B, L) bool; pooled (B, Dt) -> v (B, 3, H, W)."""
        b, _, h, w = x.shape
        p = self.cfg.patch
        if h % p or w % p:
            raise ValueError(f"image side must be divisible by the patch size {p}, got {h}x{w}")
        gh, gw = h // p, w // p
        tokens = x.view(b, 3, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, 3 * p * p)
        if gh != gw:
            raise ValueError(f"ShapesDiT needs square images, got {h}x{w}")
        pos = sincos_2d(gh, self.cfg.dim, x.device).to(x.dtype)
        hdn = self.patch_in(tokens) + pos  # (B, N, D)
        txt = self.text_in(text)  # (B, L, D)
        c = self.t_mlp(timestep_embedding(sigma, 256).to(x.dtype)) + self.text_in(pooled)  # (B, D)
        for blk in self.blocks:
            hdn = blk(hdn, c, txt, text_mask)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        out = self.out(_modulate(self.norm_out(hdn), shift, scale))  # (B, N, 3 p p)
        return out.view(b, gh, gw, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, h, w)


class ShapesFlowModel(nn.Module):
    """Text encoder + DiT. The adapter trains only `dit`; the text encoder stays frozen, as in Flux."""

    def __init__(self, cfg: FlowModelConfig):
        super().__init__()
        self.cfg = cfg
        self.text_encoder = TextEncoder(cfg.text)
        self.dit = ShapesDiT(cfg)

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Captions -> (tokens (B, L, Dt), mask (B, L), pooled (B, Dt)) on the model's device."""
        ids, mask = tokenize(prompts)
        dev = self.dit.out.weight.device
        ids, mask = ids.to(dev), mask.to(dev)
        tokens, pooled = self.text_encoder(ids, mask)
        return tokens, mask, pooled

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Training-time convenience: x (B, 3, S, S), sigma (B,), captions -> v (B, 3, S, S)."""
        tokens, mask, pooled = self.encode(prompts)
        return self.dit(x, sigma, tokens, mask, pooled)
