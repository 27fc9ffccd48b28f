"""Tiny random Flux / SD3 pipelines built from configs in code (no downloads), for the adapter tests.

Follows diffusers' `get_dummy_components` pattern (tests/pipelines/flux/test_pipeline_flux.py, diffusers 0.42.1)
but trains the tokenizers in memory instead of fetching hf-internal-testing checkpoints.
"""

from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                       SD3Transformer2DModel, StableDiffusion3Pipeline)
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config,
                          T5EncoderModel, T5Tokenizer)

CORPUS = ["a red circle left of a blue square", "two green triangles", "a photo of a cat on a mat",
          "an astronaut riding a horse", "a yellow square above a purple circle"] * 4
T5_LEN = 16  # max_sequence_length used by tests (Flux default 512, SD3 256: too slow for tiny checks)


def clip_tokenizer() -> CLIPTokenizer:
    tok = CLIPTokenizer().train_new_from_iterator(CORPUS, vocab_size=300)
    tok.model_max_length = 77
    return tok


def t5_tokenizer() -> T5Tokenizer:
    words = sorted({w for line in CORPUS for w in line.split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in words]
    vocab += [(ch, -5.0) for ch in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def clip_encoder(tok: CLIPTokenizer, with_projection: bool, seed: int, hidden: int = 16):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         hidden_size=hidden, intermediate_size=24, num_attention_heads=2, num_hidden_layers=2,
                         vocab_size=len(tok), projection_dim=hidden, max_position_embeddings=77)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg).eval()


def t5_encoder(tok: T5Tokenizer, seed: int, d_model: int = 32) -> T5EncoderModel:
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def vae(latent_channels: int, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    # two blocks -> one downsampling -> vae_scale_factor 2: 32x32 images have 16x16 latents.
    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035).eval()


def flux_pipeline(guidance_embeds: bool = True, seed: int = 0) -> FluxPipeline:
    """Tiny FLUX.1-dev (guidance_embeds=True) or -schnell (False) pipeline with the stock scheduler config."""
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=[4, 4, 8])
    if guidance_embeds:  # FLUX.1-dev's scheduler_config.json
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    else:  # FLUX.1-schnell's
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return FluxPipeline(scheduler=scheduler, vae=vae(4, seed + 1), text_encoder=clip_encoder(clip_tok, False, seed + 2),
                        tokenizer=clip_tok, text_encoder_2=t5_encoder(t5_tok, seed + 3), tokenizer_2=t5_tok,
                        transformer=transformer)


def sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """Tiny SD3 pipeline: two CLIPs (16 wide each, concatenated = T5 width 32) and a T5, shift 3.0."""
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=32,
                                        pooled_projection_dim=32, out_channels=4)
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae(4, seed + 1),
        text_encoder=clip_encoder(clip_tok, True, seed + 2), tokenizer=clip_tok,
        text_encoder_2=clip_encoder(clip_tok, True, seed + 3), tokenizer_2=clip_tok,
        text_encoder_3=t5_encoder(t5_tok, seed + 4), tokenizer_3=t5_tok, transformer=transformer)
