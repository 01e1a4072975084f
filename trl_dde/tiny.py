"""Tiny Stable Diffusion 1.5-, SDXL- and SD3-architecture pipelines and preference datasets, built in code.

They power ``trl-dde demo`` and the test suite: no download, seconds on a CPU. The component shapes
follow diffusers' ``get_dummy_components`` (UNet ``block_out_channels=(32, 64)``, cross-attention
width = text hidden size), with a byte-level CLIP tokenizer written to disk (and, for SD3, a character-level
T5 tokenizer built with ``tokenizers``). Weights are random, so
the "images" a tiny pipeline makes are noise; what is real is every code path they exercise.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features, Image, Value
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image as PILImage
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

__all__ = ["tiny_flux_pipeline", "tiny_preference_dataset", "tiny_sd3_pipeline", "tiny_sd15_pipeline", "tiny_sdxl_pipeline", "tiny_t5_tokenizer",
           "tiny_tokenizer"]

TEXT_HIDDEN_SIZE = 32
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "disc", "stripe")


def tiny_tokenizer(folder: str | Path | None = None) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer (no merges: one token per byte), built from vocab.json + merges.txt written to
    ``folder`` (kept) or, without one, to a temporary folder removed once the tokenizer has read them."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="trl-dde-tokenizer-") as scratch:
            return tiny_tokenizer(scratch)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocabulary = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    # transformers 5 ignores vocab_file=/merges_file= keywords: the paths must be positional.
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_t5_tokenizer(model_max_length: int = 32) -> T5TokenizerFast:
    """A character-level T5 tokenizer (Unigram over printable ASCII, ``</s>`` appended, ``<pad>`` = 0), built in code."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocabulary = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(chr(i), -1.0) for i in range(33, 127)]
    backend = Tokenizer(models.Unigram(vocabulary, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=model_max_length)


def _tiny_vae(**extra) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=32,
        **extra,
    )


def _tiny_text_config(tokenizer: CLIPTokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        **extra,
    )


def _scheduler(prediction_type: str) -> DDIMScheduler:
    """SD's training schedule (scaled-linear β from 0.00085 to 0.012, T = 1000) in a DDIM sampler."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _tiny_unet(**extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **extra,
    )


def tiny_sd15_pipeline(seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """A randomly initialised SD1.5-architecture pipeline (≈1.4M UNet parameters, 32 px images, 16 px latents)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    return StableDiffusionPipeline(
        unet=_tiny_unet(cross_attention_dim=TEXT_HIDDEN_SIZE),
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_tiny_text_config(tokenizer)),
        tokenizer=tokenizer,
        scheduler=_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusionXLPipeline:
    """A randomly initialised SDXL-architecture pipeline: two text encoders (the second with a projection),
    a UNet with SDXL's ``text_time`` added conditioning (pooled text + 6 micro-conditioning ids)."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    time_embed_dim = 8
    unet = _tiny_unet(
        cross_attention_dim=2 * TEXT_HIDDEN_SIZE,  # both encoders' hidden states, concatenated
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN_SIZE,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_tiny_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_tiny_text_config(tokenizer_2, projection_dim=TEXT_HIDDEN_SIZE)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_scheduler(prediction_type),
        add_watermarker=False,
    )


def tiny_sd3_pipeline(seed: int = 0, text_encoder_3: bool = True, shift: float = 3.0) -> StableDiffusion3Pipeline:
    """A randomly initialised SD3-architecture pipeline (diffusers' dummy SD3 shapes with patch size 2): two CLIP
    encoders with projections (pooled 32 + 32), a T5 encoder (``text_encoder_3=False``: the no-T5 mode), an
    ``SD3Transformer2DModel`` and SD3's flow-matching scheduler (``shift=3.0``); 32 px images, 16 px latents."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=TEXT_HIDDEN_SIZE, caption_projection_dim=32,
        pooled_projection_dim=2 * TEXT_HIDDEN_SIZE, pos_embed_max_size=32,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=_tiny_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModelWithProjection(_tiny_text_config(tokenizer, projection_dim=TEXT_HIDDEN_SIZE)),
        text_encoder_2=CLIPTextModelWithProjection(_tiny_text_config(tokenizer_2, projection_dim=TEXT_HIDDEN_SIZE)),
        text_encoder_3=_tiny_t5() if text_encoder_3 else None,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        tokenizer_3=tiny_t5_tokenizer() if text_encoder_3 else None,
    )


def _tiny_t5() -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=128, d_model=TEXT_HIDDEN_SIZE, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """A randomly initialised Flux.1-architecture pipeline (diffusers' dummy Flux shapes): CLIP (pooled 32) and T5,
    a ``FluxTransformer2DModel`` on ``2×2``-packed 4-channel latents (16 input channels), a guidance embedding
    (Flux.1-dev; ``guidance_embeds=False``: schnell), Flux's dynamically shifted flow-matching scheduler."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN_SIZE, pooled_projection_dim=TEXT_HIDDEN_SIZE, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
        vae=_tiny_vae(shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModel(_tiny_text_config(tokenizer)),
        text_encoder_2=_tiny_t5(),
        tokenizer=tokenizer,
        tokenizer_2=tiny_t5_tokenizer(),
    )


def _draw(color: tuple[int, int, int], shape: str, size: int, rng: np.random.Generator, noise: float) -> bytes:
    """JPEG bytes of a coloured shape on a grey background with some pixel noise."""
    canvas = np.full((size, size, 3), 128.0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.35, 0.65, size=2)
    if shape == "square":
        mask = (abs(yy - cy) < 0.25) & (abs(xx - cx) < 0.25)
    elif shape == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 0.09
    else:
        mask = abs(xx - cx) < 0.12
    canvas[mask] = color
    canvas += rng.normal(0.0, noise, canvas.shape)
    buffer = io.BytesIO()
    PILImage.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tiny_preference_dataset(
    num_pairs: int = 32, image_size: int = 32, seed: int = 0, schema: str = "pickapic", tie_every: int = 0
) -> Dataset:
    """A synthetic preference dataset: the preferred image shows the prompt's colour and shape cleanly,
    the other shows a wrong colour with heavy noise.

    ``schema="pickapic"`` gives Pick-a-Pic v2 columns (``caption``, ``jpg_0``, ``jpg_1`` as JPEG bytes,
    ``label_0``; the winner's side alternates); ``schema="paired"`` gives ``prompt``/``chosen``/``rejected``
    with ``datasets.Image`` features. ``tie_every=k`` makes every k-th Pick-a-Pic pair a tie (label 0.5).
    """
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    rows = {"prompt": [], "good": [], "bad": []}
    for i in range(num_pairs):
        color, shape = names[i % len(names)], SHAPES[(i // len(names)) % len(SHAPES)]
        wrong = names[(i + 1 + rng.integers(len(names) - 1)) % len(names)]
        rows["prompt"].append(f"a {color} {shape}")
        rows["good"].append(_draw(COLORS[color], shape, image_size, rng, noise=4.0))
        rows["bad"].append(_draw(COLORS[wrong], shape, image_size, rng, noise=40.0))
    if schema == "paired":
        features = Features({"prompt": Value("string"), "chosen": Image(), "rejected": Image()})
        data = {"prompt": rows["prompt"], "chosen": [{"bytes": b, "path": None} for b in rows["good"]],
                "rejected": [{"bytes": b, "path": None} for b in rows["bad"]]}
        return Dataset.from_dict(data, features=features)
    if schema != "pickapic":
        raise ValueError(f"schema must be 'pickapic' or 'paired', got {schema!r}.")
    swap = [i % 2 == 1 for i in range(num_pairs)]
    labels = [0.5 if tie_every and i % tie_every == tie_every - 1 else (0.0 if swap[i] else 1.0) for i in range(num_pairs)]
    return Dataset.from_dict(
        {
            "caption": rows["prompt"],
            "jpg_0": [bad if s else good for good, bad, s in zip(rows["good"], rows["bad"], swap)],
            "jpg_1": [good if s else bad for good, bad, s in zip(rows["good"], rows["bad"], swap)],
            "label_0": labels,
        },
        features=Features({"caption": Value("string"), "jpg_0": Value("binary"), "jpg_1": Value("binary"), "label_0": Value("float64")}),
    )
