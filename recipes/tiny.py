"""Tiny SQ-LLaVA building blocks shared by the tests, the benchmarks and the offline embedded default.

Everything here is built from configs and a tokenizer trained on the fly: nothing is downloaded. The shapes are
small enough for a CPU (2 cores) yet keep every code path of the 7B model: a CLIP tower whose layer -2 is selected,
a prototype extractor with fewer prototypes than image tokens (so pooling windows overlap unevenly), a Llama with
grouped-query attention, and a vocabulary carrying `<image>` and `<pad>`.
"""

from __future__ import annotations

from typing import Any

# 56 px / patch 14 -> 16 image tokens; 6 prototypes do not divide 16, so AdaptiveAvgPool windows overlap as at 576 -> 256.
TINY_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 56,
    "patch_size": 14,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
TINY_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}


def tiny_model_config(
    *,
    vocab_size: int = 1024,
    image_token_id: int | None = None,
    pad_token_id: int | None = None,
    projector_type: str = "prototype",
    num_prototypes: int = 6,
    **overrides: Any,
):
    """Config of the tiny SQ-LLaVA used across tests, benchmarks and the embedded default.

    Args:
        vocab_size: text vocabulary size (use `len(tokenizer)` rounded up to a multiple of 64).
        image_token_id: id of `<image>`; defaults to `vocab_size - 2`.
        pad_token_id: id of `<pad>`; defaults to `vocab_size - 1`.
        projector_type: `"prototype"` (SQ-LLaVA) or `"mlp2x_gelu"` (plain LLaVA-1.5).
        num_prototypes: prototypes of the extractor (16 image tokens in the tiny tower).
        overrides: any other `SQLlavaConfig` argument.
    """
    from modeling_sqllava import SQLlavaConfig

    image_token_id = vocab_size - 2 if image_token_id is None else image_token_id
    pad_token_id = vocab_size - 1 if pad_token_id is None else pad_token_id
    text_config = dict(
        TINY_TEXT_CONFIG, vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=1, eos_token_id=2
    )
    return SQLlavaConfig(
        vision_config=dict(TINY_VISION_CONFIG),
        text_config=text_config,
        image_token_id=image_token_id,
        projector_type=projector_type,
        num_prototypes=num_prototypes,
        **overrides,
    )


def build_tiny_tokenizer(vocab_size: int = 700):
    """A Llama-style tokenizer (`<unk>`=0, `<s>`=1, `</s>`=2, plus `<image>` and `<pad>`) trained offline on the
    chat prompts and the synthetic shapes vocabulary, so the embedded default's sentences take few tokens.

    Args:
        vocab_size: base vocabulary (`<image>` and `<pad>` come on top). The tests use 700; the embedded default's
            towers 1,024, at which the system prompts get whole-word pieces too (`recipes/run_tiny.py`).
    """
    from processing.tiny_tokenizer import build_tiny_tokenizer as _build
    from recipes.synthetic import corpus_sentences

    return _build(vocab_size=vocab_size, extra_corpus=corpus_sentences())


def build_tiny_processor(tokenizer=None, *, image_size: int = TINY_VISION_CONFIG["image_size"]):
    """`SQLlavaProcessor` for the tiny tower: LLaVA pad-to-square preprocessing at `image_size` pixels."""
    from processing import SQLlavaProcessor

    tokenizer = build_tiny_tokenizer() if tokenizer is None else tokenizer
    patches = (image_size // TINY_VISION_CONFIG["patch_size"]) ** 2
    return SQLlavaProcessor.from_tokenizer(tokenizer, image_size=image_size, image_seq_length=patches)


def build_tiny_model(tokenizer=None, *, seed: int = 0, **config_kwargs: Any):
    """A randomly initialised tiny `SQLlavaForConditionalGeneration` whose vocabulary matches `tokenizer`."""
    import torch

    from modeling_sqllava import SQLlavaForConditionalGeneration

    tokenizer = build_tiny_tokenizer() if tokenizer is None else tokenizer
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded to a multiple of 64, as on the 7B model
    config = tiny_model_config(
        vocab_size=vocab_size,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )
    torch.manual_seed(seed)
    return SQLlavaForConditionalGeneration(config).eval()
