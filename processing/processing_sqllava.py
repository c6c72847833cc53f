"""Processor for SQ-LLaVA: LLaVA-1.5 "pad" image preprocessing, the Vicuna-v1 chat template with the
self-questioning `vuser` role, and tokenization identical to the original LLaVA `tokenizer_image_token`.

This file is shipped to the Hub next to the model files and loaded with `trust_remote_code=True`: it imports only
the standard library, numpy, PIL, torch and transformers, never `modeling_sqllava`.

Tokenizer fidelity (what the released weights were trained on)
----------------------------------------------------------------
LLaVA/SQ-LLaVA built input ids with `tokenizer_image_token`: split the rendered prompt at `<image>`, tokenize every
chunk on its own with the SLOW Llama SentencePiece tokenizer of transformers 4.31, drop the BOS of every chunk after
the first and put the image positions in between. That tokenizer's behaviour depends on the checkpoint's `legacy`
flag (after `</s>`, `VUSER` is `▁V USER` with `legacy=True`, `V USER` with `legacy=False`), and today's fast
tokenizers reproduce neither setting exactly. The processor therefore tokenizes with [`SQLlavaTokenizer`]
(tokenization_sqllava.py, shipped next to this file and registered for `AutoTokenizer`), which reproduces 4.31 for
the flag the checkpoint was saved with; a fast Llama tokenizer given to the processor is converted to it (keeping
its flag), so vLLM, lmms-eval and any other client loading the folder's tokenizer get the same ids as the
processor. `<image>` is an added special token after which the text is tokenized as the start of a chunk, so one
pass over the whole prompt equals the chunk-by-chunk procedure; the image id is then expanded to `image_seq_length`
copies. Checked against `sentencepiece` itself on the Llama-2 vocabulary for both flags (tests/test_processing.py,
tests/test_tokenization.py), with SYS standing for the system prompt, `legacy=True`:

- `"A cat.</s>VUSER: Is it black?</s> ASSISTANT: Yes.</s>"` ->
  `▁A ▁cat . </s> ▁V USER : ▁Is ▁it ▁black ? </s> ▁ ▁A SS IST ANT : ▁Yes . </s>`
  = `[319, 6635, 29889, 2, 478, 11889, 29901, 1317, 372, 4628, 29973, 2, 29871, 319, 1799, 9047, 13566, 29901,
  3869, 29889, 2]`: `▁V` (478) after `</s>`, and `" ASSISTANT"` after `</s>` is `▁` (29871) + `▁A` (319);
  `legacy=False` gives `V` (29963) instead of `▁V`, the rest is the same.
- a chunk ending in a space ends with the lone `▁` token 29871 (`"SYS USER: "` -> `... ▁US ER : ▁`), and the
  chunk after `<image>` starts with it too (`"\\nWhat"` -> `▁ <0x0A> What`).

The chat template starts with the BOS token (`<s>`), as transformers' templates do; a prompt that starts with it
is not given a second one (by this processor, by the tokenizer or by vLLM).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import transformers
from packaging import version
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import AddedToken
from transformers.utils import logging

from .tokenization_sqllava import REPLY_TAG_PATTERN, SQLlavaTokenizer, is_sqllava_tokenizer


logger = logging.get_logger(__name__)

LLAVA_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
# Appended to the LLaVA prompt with no space in between, exactly as SQ-LLaVA was trained.
SQ_SYSTEM_PROMPT = (
    LLAVA_SYSTEM_PROMPT + "Also, the artificial intelligence assistant is a curious virtual user. The virtual user "
    "asks complex questions that are relevant to the content in the image, for example, asking about background "
    "knowledge of the objects in the image, asking to discuss about events happening in the image, etc. Again, do "
    "not ask about uncertain details."
)
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
ROLE_TAGS = {"user": "USER", "assistant": "ASSISTANT", "vuser": "VUSER"}
VALID_ROLES = ("system", "user", "assistant", "vuser")
# token_roles values returned by `tokenize_conversation`.
ROLE_UNTRAINED, ROLE_ANSWER, ROLE_QUESTION = 0, 1, 2

# CLIP's image normalisation, used by LLaVA-1.5 (openai/clip-vit-large-patch14-336).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# transformers 4.x finds sub-processors through these class attributes; 5.x infers them from `__init__` and warns
# when `*_class` attributes are present. Declare them only where they are needed.
_DECLARE_SUBPROCESSOR_CLASSES = version.parse(transformers.__version__).major < 5

# The same text as chat_template.jinja (a test checks they are identical). It is embedded because remote code is
# loaded from a cache that holds only the .py files, and a processor built from components must carry it.
CHAT_TEMPLATE = r"""{#- SQ-LLaVA chat template: the Vicuna-v1 prompt format of LLaVA-1.5 plus the self-questioning "vuser" role.
Every prompt starts with the BOS token (bos_token, "<s>"), as transformers' templates do; the processor and the
tokenizer add no second one. After it:
chat mode:  SYSTEM + " " then "USER: " + q + " ", "ASSISTANT: " + a + "</s>", "VUSER: " + q + "</s>" + " ".
plain mode: "<image>" + caption + "\n" (stage-1 alignment pre-training: no system prompt, no roles).
Variables: add_generation_prompt, generation_role ("assistant" or "vuser"), system_prompt, mode ("chat" or "plain").
Answers and vuser questions, each with the space after its role tag and its closing "</s>", are wrapped in
generation blocks: the trained spans. The space is trained because generation starts right after "ROLE:" and must
produce it (LLaVA's label arithmetic trains it too: a standalone "▁" token before a digit answer is labelled). -#}
{%- set llava_system_prompt = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions." -%}
{%- set sq_system_prompt = llava_system_prompt + "Also, the artificial intelligence assistant is a curious virtual user. The virtual user asks complex questions that are relevant to the content in the image, for example, asking about background knowledge of the objects in the image, asking to discuss about events happening in the image, etc. Again, do not ask about uncertain details." -%}
{%- set gen_role = generation_role if generation_role is defined and generation_role else "assistant" -%}
{%- set render_mode = mode if mode is defined and mode else "chat" -%}
{%- macro render_content(content) -%}
{%- if content is string -%}
{{- content -}}
{%- else -%}
{#- One loop straight over the parts: what vLLM recognises as an OpenAI-style (list of parts) template. -#}
{%- set ns = namespace(text="", texts=0, images=0) -%}
{%- for part in content -%}
{%- if part["type"] == "text" -%}{%- set ns.text = ns.text + (" " if ns.texts > 0 else "") + part["text"] -%}{%- set ns.texts = ns.texts + 1 -%}
{%- elif part["type"] == "image" -%}{%- set ns.images = ns.images + 1 -%}{%- endif -%}
{%- endfor -%}
{#- As LLaVA's preprocess_multimodal: "<image>\n" + text, stripped (an image alone is "<image>", no newline). -#}
{%- if ns.images > 0 -%}{{- ("<image>\n" * ns.images + ns.text) | trim -}}{%- else -%}{{- ns.text -}}{%- endif -%}
{%- endif -%}
{%- endmacro -%}
{%- if not messages -%}{{- raise_exception("The conversation is empty: pass at least one user message.") -}}{%- endif -%}
{%- if gen_role not in ["assistant", "vuser"] -%}{{- raise_exception("generation_role must be 'assistant' or 'vuser', got '" + gen_role|string + "'.") -}}{%- endif -%}
{%- if bos_token is defined and bos_token -%}{{- bos_token -}}{%- endif -%}
{%- if render_mode == "plain" -%}
{%- for message in messages -%}
{%- if message["role"] == "user" -%}
{%- if message["content"] is string -%}{{- "<image>" * message["content"].count("<image>") -}}
{%- else -%}{{- "<image>" * (message["content"] | selectattr("type", "equalto", "image") | list | length) -}}{%- endif -%}
{%- elif message["role"] == "assistant" -%}
{%- generation -%}{{- render_content(message["content"]) + "\n" -}}{%- endgeneration -%}
{%- elif message["role"] != "system" -%}
{{- raise_exception("Plain mode only has user and assistant messages, got role '" + message["role"]|string + "'.") -}}
{%- endif -%}
{%- endfor -%}
{%- elif render_mode == "chat" -%}
{%- if messages[0]["role"] == "system" -%}
{%- set system = render_content(messages[0]["content"]) -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set loop_messages = messages -%}
{%- if system_prompt is defined and system_prompt is not none -%}
{%- set system = system_prompt -%}
{%- elif (messages | selectattr("role", "equalto", "vuser") | list) or (add_generation_prompt and gen_role == "vuser") -%}
{%- set system = sq_system_prompt -%}
{%- else -%}
{%- set system = llava_system_prompt -%}
{%- endif -%}
{%- endif -%}
{{- system + " " -}}
{%- for message in loop_messages -%}
{%- if loop.first and message["role"] != "user" -%}
{{- raise_exception("The first message after the optional system message must be a user message, got role '" + message["role"]|string + "'.") -}}
{%- endif -%}
{%- if message["role"] == "user" -%}
{{- "USER: " + render_content(message["content"]) + " " -}}
{%- elif message["role"] == "assistant" -%}
{{- "ASSISTANT:" -}}{%- generation -%}{{- " " + render_content(message["content"]) + "</s>" -}}{%- endgeneration -%}
{%- elif message["role"] == "vuser" -%}
{{- "VUSER:" -}}{%- generation -%}{{- " " + render_content(message["content"]) + "</s>" -}}{%- endgeneration -%}{{- " " -}}
{%- elif message["role"] == "system" -%}
{{- raise_exception("A system message is only allowed as the first message.") -}}
{%- else -%}
{{- raise_exception("Unknown role '" + message["role"]|string + "': use system, user, assistant or vuser.") -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- "VUSER:" if gen_role == "vuser" else "ASSISTANT:" -}}
{%- endif -%}
{%- else -%}
{{- raise_exception("mode must be 'chat' or 'plain', got '" + render_mode|string + "'.") -}}
{%- endif -%}
"""  # noqa: E501

# `__call__` arguments that set `load_image_rgb`'s size limits (None disables one).
_IMAGE_LIMIT_KWARGS = {"max_image_pixels": "max_pixels", "max_image_aspect_ratio": "max_aspect_ratio"}
# Arguments of `__call__` that belong to the tokenizer / the image processor / only to the chat template.
_TEXT_KWARGS = {
    "padding", "truncation", "max_length", "pad_to_multiple_of", "padding_side", "return_attention_mask",
    "return_offsets_mapping", "add_special_tokens", "return_tensors",
}  # fmt: skip
_IMAGE_KWARGS = {
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std", "do_pad", "do_convert_rgb", "data_format", "input_data_format", "device",
}  # fmt: skip
# Passed by `apply_chat_template` / pipelines on some transformers versions; they carry nothing for this processor.
_IGNORED_KWARGS = {
    "generation_role", "system_prompt", "mode", "return_mm_token_type_ids",
    "sanitize_control_tokens", "return_token_type_ids", "verbose", "return_length", "return_special_tokens_mask",
    "return_overflowing_tokens", "stride", "is_split_into_words", "continue_final_message", "add_generation_prompt",
    "return_assistant_tokens_mask", "tokenize", "return_dict", "tools", "documents", "chat_template",
    "load_audio_from_video", "sampling_rate", "num_frames", "fps", "video_load_backend", "do_sample_frames",
}  # fmt: skip


def add_sqllava_special_tokens(tokenizer) -> int:
    """
    Add `<image>` and `<pad>` to a Llama/Vicuna tokenizer if missing, in that order (ids 32000 and 32001 on the
    32,000-token Vicuna vocabulary, like llava-hf), and make `<pad>` the pad token.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the tokenizer, modified in place.

    Returns:
        `int`: the number of tokens added (0, 1 or 2). Resize the model's embeddings when it is not 0.
    """
    vocab = tokenizer.get_vocab()
    added = 0
    for token in (IMAGE_TOKEN, PAD_TOKEN):
        if token not in vocab:
            added += tokenizer.add_tokens(
                [AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False)], special_tokens=True
            )
    if tokenizer.pad_token is None or tokenizer.pad_token != PAD_TOKEN:
        tokenizer.pad_token = PAD_TOKEN
    return added


def build_image_processor(image_size: int = 336, **kwargs):
    """
    LLaVA-1.5's image preprocessing as transformers' LLaVA image processor: pad to a square with the CLIP mean
    colour (122, 116, 104), bicubic resize of the shortest edge to `image_size`, centre crop, CLIP normalisation.

    Args:
        image_size (`int`, *optional*, defaults to 336): resize and crop size (336 for ViT-L/14-336).
        kwargs: overrides passed to the image processor.
    """
    config = dict(
        do_pad=True,
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=PIL.Image.Resampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    config.update(kwargs)
    from transformers.utils import is_torchvision_available

    # transformers 5.x: `LlavaImageProcessor` needs torchvision and falls back (with a warning) to the PIL backend.
    if not is_torchvision_available() and hasattr(transformers, "LlavaImageProcessorPil"):
        return transformers.LlavaImageProcessorPil(**config)
    return transformers.LlavaImageProcessor(**config)


# Decoding limits. Checked on the file header, before any pixel is decoded: a 400-byte PNG can declare 10^8 pixels.
# 2**26 pixels is 8192 x 8192 (192 MiB as RGB), below PIL's own decompression-bomb warning (89 M pixels). Beyond an
# aspect ratio of 100 the padded square leaves the content at most 3 of 336 rows: nothing a model can read.
MAX_IMAGE_PIXELS = 2**26
MAX_IMAGE_ASPECT_RATIO = 100.0
# Resampling filters PIL computes as a separable convolution (two passes, horizontal first), and their support
# in source pixels at scale 1. `pad_to_square_and_resize` relies on both.
_FILTER_SUPPORT = {
    PIL.Image.Resampling.BOX: 0.5,
    PIL.Image.Resampling.BILINEAR: 1.0,
    PIL.Image.Resampling.HAMMING: 1.0,
    PIL.Image.Resampling.BICUBIC: 2.0,
    PIL.Image.Resampling.LANCZOS: 3.0,
}
_PRECISION_BITS = 22  # PIL's fixed-point precision for 8-bit resampling (32 - 8 - 2)


class ImageLimitError(ValueError):
    """An image over the pixel-count or aspect-ratio limit (see `check_image_limits`); a `ValueError`."""


def check_image_limits(
    width: int,
    height: int,
    name: str = "image",
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float | None = MAX_IMAGE_ASPECT_RATIO,
) -> None:
    """
    Refuse an image whose size would make decoding or preprocessing cost out of proportion to what the model sees.

    Args:
        width, height (`int`): the image size in pixels (from the file header: nothing decoded yet).
        name (`str`): how to refer to the image in the error.
        max_pixels (`int`, *optional*): largest `width * height`; `None` disables the check.
        max_aspect_ratio (`float`, *optional*): largest `max(width, height) / min(width, height)`; `None` disables it.

    Raises:
        `ImageLimitError`: naming the image, its size, the limit and how to lift it.
    """
    if width < 1 or height < 1:
        raise ImageLimitError(f"{name} is {width}x{height} pixels: an image needs at least one pixel.")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLimitError(
            f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}. Downscale it, "
            "or raise the limit (`max_image_pixels=`, None disables it)."
        )
    ratio = max(width, height) / min(width, height)
    if max_aspect_ratio is not None and ratio > max_aspect_ratio:
        raise ImageLimitError(
            f"{name} is {width}x{height} pixels, an aspect ratio of {ratio:.0f}:1, over the limit of "
            f"{max_aspect_ratio:g}:1 (padded to a square, its content would be a few pixels high). Crop it, or raise "
            "the limit (`max_image_aspect_ratio=`, None disables it)."
        )


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """The one colour rule of training and inference: PIL's `.convert("RGB")`, as LLaVA's reference code.

    Transparency is DROPPED (the RGB values under the alpha channel are kept), not composited on white as
    transformers' `convert_to_rgb` would do, so a converted checkpoint sees the pixels it was trained on. 16/32-bit
    greyscale (`I;16`, `I`) is rescaled to 8 bits first: PIL's direct conversion clips every value above 255 to white,
    and LLaVA's data holds no such image, so there is no trained behaviour to keep.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v * (255 / 65535)).convert("L")
    return image.convert("RGB")


def load_image_rgb(
    image: Any,
    name: str = "image",
    *,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float | None = MAX_IMAGE_ASPECT_RATIO,
) -> Any:
    """
    Turn one image input into what the image processor takes, as RGB: the one decoding function of training
    (`recipes.data.load_image`) and inference (`SQLlavaProcessor.__call__`).

    Paths, encoded bytes and `http(s)` URLs are opened and fully decoded (a truncated file fails here); the size
    limits (`check_image_limits`) are checked on the file header before decoding. PIL images in any mode (RGBA, LA,
    L, P, CMYK, I;16 ...) follow one colour rule (`.convert("RGB")` like LLaVA: alpha dropped, not composited on
    white). uint8 numpy arrays (HxW, HxWx1, HxWx3, HxWx4) are treated the same way; other arrays and torch tensors
    are passed on unchanged.

    Args:
        image: a path, URL, encoded bytes, `PIL.Image.Image`, numpy array or torch tensor.
        name (`str`): how to refer to the image in error messages.
        max_pixels (`int`, *optional*, defaults to `MAX_IMAGE_PIXELS`): pixel-count limit; `None` disables it.
        max_aspect_ratio (`float`, *optional*, defaults to `MAX_IMAGE_ASPECT_RATIO`): aspect-ratio limit.

    Raises:
        `ImageLimitError`: the image is over a size limit (a `ValueError`).
        `ValueError`: the file is missing, unreadable or corrupt (the message names the file).
        `TypeError`: the input is of an unsupported type.
    """
    limits = {"max_pixels": max_pixels, "max_aspect_ratio": max_aspect_ratio}
    if isinstance(image, (bytes, bytearray)):
        import io

        return _decode_file(io.BytesIO(image), name, "<bytes>", limits)
    if isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        if source.startswith(("http://", "https://")):
            from transformers.image_utils import load_image

            try:
                image = load_image(source)
            except Exception as error:  # network / decoding errors of every kind: re-raise naming the URL
                raise ValueError(f"Could not load {name} from URL {source!r}: {error}") from error
            check_image_limits(*image.size, name=f"{name} ({source})", **limits)
            return _to_rgb(image)
        if not os.path.isfile(source):
            raise ValueError(f"Could not read {name}: file {source!r} not found.")
        return _decode_file(source, name, source, limits)
    if isinstance(image, PIL.Image.Image):
        check_image_limits(*image.size, name=name, **limits)
        return _to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4))):
            check_image_limits(image.shape[1], image.shape[0], name=name, **limits)
            array = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
            return PIL.Image.fromarray(array).convert("RGB")
        return image
    if type(image).__module__.startswith("torch"):
        return image
    raise TypeError(
        f"Unsupported {name} of type {type(image).__name__}: pass a PIL image, a numpy array, a torch tensor, a "
        "file path, encoded bytes or an http(s) URL."
    )


def _decode_file(source: Any, name: str, shown: str, limits: dict) -> PIL.Image.Image:
    try:
        with PIL.Image.open(source) as opened:
            # The header is read: check the size before a single pixel is decoded.
            check_image_limits(*opened.size, name=f"{name} {shown!r}", **limits)
            opened.load()
            return _to_rgb(opened)
    except ImageLimitError:
        raise
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"Could not read {name} file {shown!r} (corrupt or not an image): {error}") from error


def pad_to_square_and_resize(
    image: PIL.Image.Image,
    size: int,
    background_color: tuple[int, int, int],
    resample: int = PIL.Image.Resampling.BICUBIC,
) -> PIL.Image.Image:
    """
    LLaVA-1.5's `expand2square` followed by a resize to `size x size`, at a cost bounded by the image, not its square.

    The result is pixel for pixel the one of padding the RGB image to a square of side `S = max(width, height)`
    (content centred, `background_color` around it) and resizing that square with PIL (`Image.resize`), which is
    what the LLaVA image processor does; but the `S x S` square is never built (a 20000x8 image would take 1.2 GB).
    PIL resizes in two separable passes, horizontal then vertical, with an 8-bit intermediate image, so:

    - a wide image (padded above and below): the horizontal pass of the content rows is PIL's resize of the content
      to `size x height`, and of every pad row PIL's resize of one constant row; the intermediate `size x S` image
      is stacked from them and PIL's vertical pass (a resize to `size x size`) finishes the job.
    - a tall image (padded left and right): output columns whose filter touches only padding take the value of a
      constant row; for the few that touch the content, the horizontal pass is recomputed exactly as PIL does it
      (fixed point, `(2^21 + sum_x k_x v_x) >> 22`), with PIL's own integer coefficients read off a resize of unit
      impulses (a 32-bit image resizes with the same coefficients, unrounded: `round(2^22 k_x)` is exact).

    A self-check against the direct computation on small images guards every call (cached per filter); if PIL
    ever computes differently, the direct padded path is used instead.

    Args:
        image (`PIL.Image.Image`): an RGB image.
        size (`int`): output side.
        background_color (`tuple[int, int, int]`): the pad colour (LLaVA: the CLIP mean, (122, 116, 104)).
        resample (`int`): a PIL filter (BICUBIC for LLaVA); NEAREST is not a convolution and takes the direct path.
    """
    fill = tuple(int(c) for c in background_color)
    if image.mode != "RGB":
        raise ValueError(f"`image` must be RGB (see `load_image_rgb`), got mode {image.mode!r}.")
    resample = PIL.Image.Resampling(resample)
    width, height = image.size
    if width == height:
        return image.resize((size, size), resample)
    if resample not in _FILTER_SUPPORT or not _bounded_resize_is_exact(resample):
        return _padded_resize(image, size, fill, resample)
    return _bounded_pad_resize(image, size, fill, resample)


def _padded_resize(image: PIL.Image.Image, size: int, fill: tuple, resample) -> PIL.Image.Image:
    """The direct computation: build the padded square, then resize it (LLaVA's `expand2square` + resize)."""
    width, height = image.size
    side = max(width, height)
    square = PIL.Image.new("RGB", (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square.resize((size, size), resample)


def _bounded_pad_resize(image: PIL.Image.Image, size: int, fill: tuple, resample) -> PIL.Image.Image:
    width, height = image.size
    side = max(width, height)
    # The horizontal pass of a pad row: PIL's resize of one constant row of the padded width.
    pad_row = np.asarray(PIL.Image.new("RGB", (side, 1), fill).resize((size, 1), resample))[0]
    intermediate = np.empty((side, size, 3), dtype=np.uint8)
    intermediate[:] = pad_row
    if width > height:
        top = (side - height) // 2
        intermediate[top : top + height] = np.asarray(image.resize((size, height), resample))
    else:
        left = (side - width) // 2
        first, columns, band = _horizontal_coefficients(side, left, width, size, resample)
        inside = np.zeros(len(band), dtype=bool)
        inside[left - first : left - first + width] = True
        weights = band[inside].astype(np.float64)  # (width, columns)
        # The pad columns' share of each output column, plus PIL's rounding offset 2^21.
        offsets = np.asarray(fill, dtype=np.float64)[:, None] * band[~inside].sum(axis=0) + (
            1 << (_PRECISION_BITS - 1)
        )
        content = np.asarray(image)
        for start in range(0, height, 1024):  # rows in blocks: bounded float64 working memory
            block = content[start : start + 1024]
            rows = len(block)
            planes = np.ascontiguousarray(block.transpose(2, 0, 1), dtype=np.float64).reshape(3 * rows, width)
            # float64 is exact: every |sum| < 255 * 2^22 * 2 < 2^53, and so is the division by 2^22.
            total = (planes @ weights).reshape(3, rows, len(columns)) + offsets[:, None, :]
            values = np.clip(np.floor(total / (1 << _PRECISION_BITS)), 0, 255).astype(np.uint8)
            intermediate[start : start + rows, columns] = values.transpose(1, 2, 0)
    # The vertical pass: PIL's resize of the `size x side` intermediate (its width is already `size`).
    return PIL.Image.fromarray(intermediate).resize((size, size), resample)


def _horizontal_coefficients(
    side: int, left: int, width: int, size: int, resample
) -> tuple[int, np.ndarray, np.ndarray]:
    """PIL's integer coefficients of the `side -> size` horizontal pass, for the output columns whose filter overlaps
    source columns `[left, left + width)`: `(first, columns, band)`, where `band[i, j]` weighs source column
    `first + i` in output column `columns[j]` (the band of source columns covers each such filter, with a margin for
    PIL's rounding of its bounds).

    The coefficients are read off PIL itself: a 32-bit image resizes with the same (double) coefficients as an 8-bit
    one but does not round them to 8 bits, so a unit impulse of value 2^22 at source column `x` comes out as
    `round(2^22 k_x)` in every output column whose filter holds `x`: the 8-bit pass's integer coefficient. One row
    holds impulses a period apart that is longer than any filter, so each output column sees at most one of them.
    """
    scale = side / size
    support = _FILTER_SUPPORT[resample] * max(scale, 1.0)
    first = max(0, int(left - 2 * support) - 2)
    last = min(side, int(left + width + 2 * support) + 3)
    centers = (np.arange(size) + 0.5) * scale
    candidates = np.nonzero((centers + support + 1.5 > left) & (centers - support - 1.5 < left + width))[0]
    period = 2 * math.ceil(support) + 4  # PIL's filters span at most 2 * ceil(support) + 1 source columns
    band = np.zeros((last - first, len(candidates)), dtype=np.int64)
    offsets = np.arange(min(period, last - first))
    for start in range(0, len(offsets), 64):  # 64 impulse rows per resize: bounded memory for any width
        rows = offsets[start : start + 64]
        impulses = np.zeros((len(rows), side), dtype=np.int32)
        for r, offset in enumerate(rows):
            impulses[r, first + offset : last : period] = 1 << _PRECISION_BITS
        resized = np.asarray(PIL.Image.fromarray(impulses, "I").resize((size, len(rows)), resample), dtype=np.int64)
        for r, offset in enumerate(rows):
            # The impulse of this row nearest to each candidate's centre is the only one its filter can hold.
            position = first + offset + np.round((centers[candidates] - first - offset) / period) * period
            held = (position >= first) & (position < last) & (np.abs(position - centers[candidates]) <= support + 1)
            band[position[held].astype(np.int64) - first, np.nonzero(held)[0]] = resized[r, candidates[held]]
    used = band[left - first : left - first + width].any(axis=0)
    return first, candidates[used], band[:, used]


@functools.cache
def _bounded_resize_is_exact(resample) -> bool:
    """Whether `_bounded_pad_resize` equals the direct computation on small wide and tall images (once per filter)."""
    rng = np.random.default_rng(0)
    for width, height, size in ((61, 23, 16), (23, 61, 16), (9, 140, 12), (140, 9, 12), (5, 3, 20), (3, 5, 20)):
        image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        fast = np.asarray(_bounded_pad_resize(image, size, (122, 116, 104), resample))
        if not np.array_equal(fast, np.asarray(_padded_resize(image, size, (122, 116, 104), resample))):
            logger.warning_once(
                "This PIL version resizes differently from what the bounded pad-and-resize assumes; images are padded "
                "to a square in full before resizing (exact, but memory grows with the square)."
            )
            return False
    return True


def _square_resize_settings(image_processor, image_kwargs: dict) -> tuple[int, tuple, Any] | None:
    """`(side, pad colour, filter)` when the image processor pads to a square and resizes it to `side x side` with a
    PIL filter (LLaVA-1.5's preprocessing), with call-time overrides; None otherwise (nothing is pre-resized)."""

    def setting(key):
        return image_kwargs[key] if key in image_kwargs else getattr(image_processor, key, None)

    if not setting("do_pad") or not setting("do_resize"):
        return None
    size = setting("size")
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    if get("shortest_edge") and not get("longest_edge"):
        side = int(get("shortest_edge"))
    elif get("height") and get("height") == get("width"):
        side = int(get("height"))
    else:
        return None
    mean = setting("image_mean")
    if not isinstance(mean, (list, tuple)) or len(mean) != 3:
        return None
    try:
        resample = PIL.Image.Resampling(int(setting("resample")))
    except (TypeError, ValueError):  # e.g. a torchvision InterpolationMode: leave the image processor to it
        return None
    # The pad colour as the LLaVA image processors compute it (`int(x * 255)` of the mean: (122, 116, 104) for CLIP).
    return side, tuple(int(x * 255) for x in mean), resample


def _is_image_input(obj: Any) -> bool:
    return isinstance(obj, (str, os.PathLike, PIL.Image.Image, np.ndarray)) or type(obj).__module__.startswith("torch")


def _flatten_images(images: Any) -> tuple[list, list[int] | None]:
    """Flat list of images and, when given per sample (a list of lists), the number of images of each sample."""
    if images is None:
        return [], None
    if _is_image_input(images):
        return [images], None
    if isinstance(images, Sequence):
        if any(isinstance(item, (list, tuple)) for item in images):
            flat, counts = [], []
            for item in images:
                item = [] if item is None else list(item) if isinstance(item, (list, tuple)) else [item]
                flat.extend(item)
                counts.append(len(item))
            return flat, counts
        return list(images), None
    raise TypeError(f"`images` must be an image, a list of images or a list of lists of images, got {type(images)}.")


def _content_text(content: Any, where: str) -> str:
    """Render a message content (a string or a list of parts) exactly as chat_template.jinja does."""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise TypeError(f"{where}: `content` must be a string or a list of parts, got {type(content).__name__}.")
    images = sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image")
    texts = [part["text"] for part in content if isinstance(part, dict) and part.get("type") == "text"]
    if not images:
        return " ".join(texts)
    # LLaVA's `preprocess_multimodal`: "<image>\n" + text, stripped, so an image alone is "<image>" (no newline).
    return ((IMAGE_TOKEN + "\n") * images + " ".join(texts)).strip()


def _count_images(content: Any) -> int:
    if isinstance(content, str):
        return content.count(IMAGE_TOKEN)
    return sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image")


def validate_messages(messages: Any, mode: str = "chat") -> None:
    """
    Check a conversation before rendering it; raise a `ValueError`/`TypeError` that says what to fix.

    Args:
        messages (`list[dict]`): `[{"role": "system" | "user" | "assistant" | "vuser", "content": str | list}]`.
        mode (`str`): `"chat"` or `"plain"`.
    """
    if mode not in ("chat", "plain"):
        raise ValueError(f"`mode` must be 'chat' or 'plain', got {mode!r}.")
    if not isinstance(messages, (list, tuple)) or len(messages) == 0:
        raise ValueError(f"`messages` must be a non-empty list of messages, got {messages!r}.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"Message {i} must be a dict with 'role' and 'content' keys, got {message!r}.")
        role = message["role"]
        if role not in VALID_ROLES:
            raise ValueError(f"Message {i} has unknown role {role!r}: use one of {', '.join(VALID_ROLES)}.")
        if role == "system" and i != 0:
            raise ValueError(f"Message {i} is a system message: a system message is only allowed first.")
        if mode == "plain" and role == "vuser":
            raise ValueError(f"Message {i} has role 'vuser': plain mode only has user and assistant messages.")
        content = message["content"]
        text = _content_text(content, f"Message {i}")
        if role != "system" and not text.replace(IMAGE_TOKEN, "").strip() and not _count_images(content):
            raise ValueError(f"Message {i} ({role}) is empty: give it some text or an image.")
        if role in ("assistant", "vuser") and not text.strip():
            raise ValueError(f"Message {i} ({role}) is empty: a trained answer or question needs text.")
    first = messages[1] if messages[0]["role"] == "system" and len(messages) > 1 else messages[0]
    if first["role"] != "user":
        raise ValueError(
            f"A conversation must start with a user message (after an optional system message), got role "
            f"{first['role']!r} first."
        )


def render_conversation(
    messages: list[dict],
    mode: str = "chat",
    system_prompt: str | None = None,
    add_generation_prompt: bool = False,
    generation_role: str = "assistant",
    bos_token: str | None = None,
) -> tuple[str, list[tuple[int, int, int]]]:
    """
    Render a conversation exactly like chat_template.jinja, returning the text and its trained character spans.

    This is the fast path used for training (no jinja); tests check it against the template. `bos_token` is what
    the template emits first (the tokenizer's BOS, which transformers passes to templates as `bos_token`); `None`
    renders none, as the template does when `bos_token` is not defined.

    Returns:
        `tuple[str, list[tuple[int, int, int]]]`: the prompt and `(start, end, role)` spans, role 1 for an
        assistant answer (and plain-mode caption) and 2 for a vuser question, each span including its `</s>`.
    """
    validate_messages(messages, mode)
    if generation_role not in ("assistant", "vuser"):
        raise ValueError(f"`generation_role` must be 'assistant' or 'vuser', got {generation_role!r}.")
    pieces: list[str] = []
    spans: list[tuple[int, int, int]] = []
    length = 0

    def emit(text: str, role: int = ROLE_UNTRAINED) -> None:
        nonlocal length
        if role != ROLE_UNTRAINED:
            spans.append((length, length + len(text), role))
        pieces.append(text)
        length += len(text)

    if bos_token:
        emit(bos_token)
    if mode == "plain":
        for message in messages:
            if message["role"] == "user":
                emit(IMAGE_TOKEN * _count_images(message["content"]))
            elif message["role"] == "assistant":
                emit(_content_text(message["content"], "assistant") + "\n", ROLE_ANSWER)
        return "".join(pieces), spans

    loop_messages = messages
    if messages[0]["role"] == "system":
        system = _content_text(messages[0]["content"], "system")
        loop_messages = messages[1:]
    elif system_prompt is not None:
        system = system_prompt
    elif any(m["role"] == "vuser" for m in messages) or (add_generation_prompt and generation_role == "vuser"):
        system = SQ_SYSTEM_PROMPT
    else:
        system = LLAVA_SYSTEM_PROMPT
    emit(system + " ")
    for message in loop_messages:
        role, text = message["role"], _content_text(message["content"], message["role"])
        if role == "user":
            emit("USER: " + text + " ")
        elif role == "assistant":
            # The space after the tag is trained: generation starts right after "ASSISTANT:" and must produce it.
            emit("ASSISTANT:")
            emit(" " + text + "</s>", ROLE_ANSWER)
        else:
            emit("VUSER:")
            emit(" " + text + "</s>", ROLE_QUESTION)
            emit(" ")
    if add_generation_prompt:
        emit(ROLE_TAGS[generation_role] + ":")
    return "".join(pieces), spans


class SQLlavaProcessor(ProcessorMixin):
    r"""
    SQ-LLaVA processor: a LLaVA image processor (pad-to-square) and a Llama/Vicuna tokenizer, with the SQ-LLaVA
    chat template (roles `system`, `user`, `assistant` and the self-questioning `vuser`).

    Args:
        image_processor ([`LlavaImageProcessor`]):
            The image processor; `do_pad=True` gives LLaVA-1.5's pad-to-square (see [`build_image_processor`]).
        tokenizer ([`SQLlavaTokenizer`] or [`LlamaTokenizerFast`]):
            The Llama/Vicuna tokenizer, with the `<image>` token (see [`add_sqllava_special_tokens`]). A fast
            tokenizer is converted to [`SQLlavaTokenizer`] (same vocabulary, its `legacy` flag kept), which
            reproduces the slow tokenizer of transformers 4.31 the model was trained with; `processor.tokenizer` is
            that tokenizer and is what `save_pretrained` writes.
        chat_template (`str`, *optional*):
            A Jinja chat template; defaults to the SQ-LLaVA template (chat_template.jinja).
        image_seq_length (`int`, *optional*, defaults to 576):
            Number of image tokens each `<image>` expands to; must equal the model config's `image_seq_length`
            (576 for ViT-L/14-336).
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The image placeholder.

    Example (answer, then make the model ask a question about the image, the paper's self-questioning inference):

    ```python
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor
    >>> processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    >>> model = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
    >>> messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    >>> prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    >>> inputs = processor(images=image, text=prompt, return_tensors="pt")
    >>> out = model.generate(**inputs, max_new_tokens=300)
    >>> description = processor.post_process_generation(processor.decode(out[0, inputs.input_ids.shape[1] :]))
    >>> messages.append({"role": "assistant", "content": description})
    >>> prompt = processor.apply_chat_template(messages, add_generation_prompt=True, generation_role="vuser")
    >>> inputs = processor(images=image, text=prompt, return_tensors="pt")
    >>> out = model.generate(**inputs, do_sample=True, temperature=1.2, top_k=300, top_p=0.95, max_new_tokens=300)
    >>> question = processor.post_process_generation(processor.decode(out[0, inputs.input_ids.shape[1] :]))
    ```
    """

    if _DECLARE_SUBPROCESSOR_CLASSES:
        attributes = ["image_processor", "tokenizer"]
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_seq_length: int = 576,
        image_token: str = IMAGE_TOKEN,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"SQLlavaProcessor got unexpected arguments {sorted(kwargs)}.")
        if image_processor is None or tokenizer is None:
            raise ValueError("SQLlavaProcessor needs both an `image_processor` and a `tokenizer`.")
        if not isinstance(image_seq_length, int) or image_seq_length <= 0:
            raise ValueError(f"`image_seq_length` must be a positive int, got {image_seq_length!r}.")
        if image_token not in tokenizer.get_vocab():
            raise ValueError(
                f"The tokenizer has no {image_token!r} token: call `add_sqllava_special_tokens(tokenizer)` first "
                "(and resize the model's embeddings)."
            )
        if not is_sqllava_tokenizer(tokenizer):
            tokenizer = SQLlavaTokenizer.from_tokenizer(tokenizer, image_token=image_token)
        self.image_seq_length = image_seq_length
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # The image processor through AutoImageProcessor, the tokenizer always as this file's sibling
        # SQLlavaTokenizer (never through AutoTokenizer): the package's own class then loads a folder without
        # importing anything from it (recipes.loading relies on it), and a folder saved before the tokenizer class
        # existed (a plain Llama tokenizer.json + tokenizer_config.json) loads with the same rule and its own
        # `legacy` flag.
        from transformers import AutoImageProcessor

        # The image processor is transformers' own LLaVA one: never the folder's code, whatever the caller allowed.
        kwargs = {key: value for key, value in kwargs.items() if key not in ("processor_dict", "trust_remote_code")}
        image_processor = AutoImageProcessor.from_pretrained(
            pretrained_model_name_or_path, trust_remote_code=False, **kwargs
        )
        kwargs.pop("use_fast", None)
        tokenizer = SQLlavaTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        image_size: int = 336,
        image_seq_length: int | None = None,
        patch_size: int = 14,
        chat_template: str | None = None,
        **image_processor_kwargs,
    ) -> SQLlavaProcessor:
        """
        Build the processor from a tokenizer: adds `<image>`/`<pad>` if missing and makes the LLaVA-1.5 image
        processor for `image_size` pixels.

        Args:
            tokenizer: a fast Llama tokenizer (modified in place by [`add_sqllava_special_tokens`]).
            image_size (`int`, *optional*, defaults to 336): image side in pixels.
            image_seq_length (`int`, *optional*): image tokens per image; defaults to `(image_size // patch_size)**2`
                (576 for ViT-L/14-336, the CLS token being dropped by the "default" feature selection).
            patch_size (`int`, *optional*, defaults to 14): the vision tower's patch size.
            chat_template (`str`, *optional*): defaults to the SQ-LLaVA template.
            image_processor_kwargs: overrides for [`build_image_processor`].
        """
        add_sqllava_special_tokens(tokenizer)
        if image_seq_length is None:
            image_seq_length = (image_size // patch_size) ** 2
        return cls(
            build_image_processor(image_size, **image_processor_kwargs),
            tokenizer,
            chat_template=chat_template,
            image_seq_length=image_seq_length,
        )

    # ----------------------------------------------------------------------------------------------- tokenization
    def _encode_unexpanded(self, text: str, add_special_tokens: bool = True) -> tuple[list[int], list]:
        """Token ids and character offsets of one prompt, one id per `<image>` (a leading `<s>` is the BOS)."""
        return self.tokenizer.encode_with_offsets(text, add_special_tokens=add_special_tokens)

    def _expand_images(self, ids: list[int], *parallel: list) -> tuple[list, ...]:
        """Repeat every image id (and the matching entries of the `parallel` lists) `image_seq_length` times."""
        positions = [i for i, token_id in enumerate(ids) if token_id == self.image_token_id]
        if not positions:
            return (ids, *parallel)
        outputs = []
        for values in (ids, *parallel):
            expanded, previous = [], 0
            for position in positions:
                expanded.extend(values[previous:position])
                expanded.extend([values[position]] * self.image_seq_length)
                previous = position + 1
            expanded.extend(values[previous:])
            outputs.append(expanded)
        return tuple(outputs)

    def _encode(self, text: str, add_special_tokens: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets of one prompt, `<image>` expanded to `image_seq_length` ids."""
        return self._expand_images(*self._encode_unexpanded(text, add_special_tokens))

    def tokenize_conversation(
        self,
        messages: list[dict],
        mode: str = "chat",
        system_prompt: str | None = None,
        add_generation_prompt: bool = False,
        generation_role: str = "assistant",
    ) -> dict[str, list[int]]:
        """
        Tokenize one training conversation and say which tokens are trained.

        Args:
            messages (`list[dict]`):
                `[{"role": "system" | "user" | "assistant" | "vuser", "content": str | list[parts]}]`; the first
                user message of a sample with an image contains `"<image>"` (canonically at its start + `"\\n"`).
            mode (`str`, *optional*, defaults to `"chat"`):
                `"chat"` (Vicuna-v1 with roles, stage 2) or `"plain"` (`<image>` + caption + `\\n`, stage 1).
            system_prompt (`str`, *optional*):
                System prompt when the messages have no system message (an explicit system message always wins).
                Defaults to `SQ_SYSTEM_PROMPT`, the prompt of every SQ-LLaVA stage-2 training sample.
            add_generation_prompt (`bool`, *optional*, defaults to `False`): end with `ASSISTANT:`/`VUSER:`.
            generation_role (`str`, *optional*, defaults to `"assistant"`): which generation prompt.

        Returns:
            `dict`: `input_ids` (`list[int]`, BOS first, `<image>` expanded) and `token_roles` (`list[int]`, same
            length): 0 untrained (system, user turns, role tags, image tokens, BOS), 1 assistant answer, 2 vuser
            question, each trained span including its closing `</s>` (in plain mode the caption and its `\\n`).
            Roles come from the token character offsets in the rendered prompt.
        """
        if mode == "chat" and system_prompt is None:
            system_prompt = SQ_SYSTEM_PROMPT
        text, spans = render_conversation(
            messages, mode, system_prompt, add_generation_prompt, generation_role, bos_token=self.tokenizer.bos_token
        )
        ids, roles = self._ids_and_roles(text, spans)
        return {"input_ids": ids, "token_roles": roles}

    def _ids_and_roles(self, text: str, spans: list[tuple[int, int, int]]) -> tuple[list[int], list[int]]:
        """Expanded ids of a rendered prompt and the role of each token from the trained character `spans`."""
        ids, offsets = self._encode_unexpanded(text)
        roles = [ROLE_UNTRAINED] * len(ids)
        if spans:
            # Tokens never cross a span boundary: spans end at `</s>` (a special token) or at "\n" followed by
            # the next chunk; a token is trained when its characters overlap a span.
            span_index, n_spans = 0, len(spans)
            for i, (start, end) in enumerate(offsets):
                if end <= start:  # BOS: zero width
                    continue
                while span_index < n_spans and spans[span_index][1] <= start:
                    span_index += 1
                if span_index == n_spans:
                    break
                span_start, _, role = spans[span_index]
                if end > span_start and ids[i] != self.image_token_id:
                    roles[i] = role
        return self._expand_images(ids, roles)

    # -------------------------------------------------------------------------------------------------- __call__
    def __call__(self, images=None, text=None, audio=None, videos=None, **kwargs) -> BatchFeature:
        """
        Prepare prompts and images for the model.

        Args:
            images: one image or a list (or a list of lists, per sample) of PIL images, numpy arrays, torch
                tensors, file paths or URLs; one per `<image>` placeholder in `text`.
            text (`str` or `list[str]`): prompts, e.g. from `apply_chat_template`.
            kwargs: tokenizer options (`padding`, `truncation`, `max_length`, `pad_to_multiple_of`,
                `padding_side`, `return_attention_mask`, `return_offsets_mapping`, `add_special_tokens`),
                `return_tensors`, image processor options (also accepted as `text_kwargs=`/`images_kwargs=`), and
                `return_text_replacement_offsets=True` (what vLLM's Transformers backend asks for).

        Returns:
            [`BatchFeature`]: `input_ids`, `attention_mask` and, with images, `pixel_values`; with
            `return_text_replacement_offsets=True` also `text_replacement_offsets`: per prompt, one dict per
            `<image>` as transformers' `ProcessorMixin.get_text_with_replacements` describes it (`type`, `span` and
            `text` of the placeholder, `replacement`: the `image_seq_length` image tokens it expands to, and
            `new_span`, where the replacement lies in the expanded prompt).
        """
        if audio is not None or videos is not None:
            raise ValueError("SQLlavaProcessor handles images and text only; got `audio` or `videos`.")
        if images is None and text is None:
            raise ValueError("Pass `text` and/or `images` to SQLlavaProcessor.")
        text_kwargs, image_kwargs, limits, return_offsets = self._split_kwargs(kwargs)
        return_tensors = text_kwargs.pop("return_tensors", None)

        flat_images, per_sample = _flatten_images(images)
        data: dict[str, Any] = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not all(isinstance(t, str) for t in texts):
                raise TypeError("`text` must be a string or a list of strings.")
            placeholders = [t.count(self.image_token) for t in texts]
            if sum(placeholders) != len(flat_images):
                raise ValueError(
                    f"The text has {sum(placeholders)} {self.image_token} placeholder(s) but {len(flat_images)} "
                    f"image(s) were passed: give exactly one image per {self.image_token}."
                )
            if per_sample is not None and len(per_sample) == len(texts) and per_sample != placeholders:
                raise ValueError(
                    f"Per-sample {self.image_token} placeholders {placeholders} do not match the per-sample image "
                    f"counts {per_sample}."
                )
            data.update(self._tokenize_batch(texts, **text_kwargs))
        if flat_images:
            data["pixel_values"] = self._preprocess_images(flat_images, return_tensors, image_kwargs, limits)
        output = BatchFeature(data=data, tensor_type=return_tensors)
        if return_offsets and text is not None:
            # Set after the tensor conversion: a list of dicts is no tensor (4.57's BatchFeature cannot skip keys).
            output["text_replacement_offsets"] = [self._replacement_offsets(t) for t in texts]
        return output

    def _replacement_offsets(self, text: str) -> list[dict[str, Any]]:
        replacement = self.image_token * self.image_seq_length
        offsets, shift = [], 0
        for match in re.finditer(re.escape(self.image_token), text):
            start, end = match.span()
            new_start = start + shift
            offsets.append(
                {
                    "type": "image",
                    "span": (start, end),
                    "new_span": (new_start, new_start + len(replacement)),
                    "text": self.image_token,
                    "replacement": replacement,
                }
            )
            shift += len(replacement) - (end - start)
        return offsets

    def _get_num_multimodal_tokens(self, image_sizes: list | None = None, **kwargs):
        """
        How many placeholder tokens and how many rows of `pixel_values` each image takes, for engines that plan
        memory before processing (vLLM): `image_seq_length` tokens and one row per image, whatever its size (every
        image is padded to a square and resized to the tower's resolution).

        Args:
            image_sizes (`list[tuple[int, int]]`, *optional*): `(height, width)` of each image.
            kwargs: processing options; none changes the counts.

        Returns:
            `MultiModalData` with `num_image_tokens` and `num_image_patches` (one entry per image).
        """
        from transformers.processing_utils import MultiModalData

        if image_sizes is None:
            return MultiModalData()
        count = len(image_sizes)
        return MultiModalData(num_image_tokens=[self.image_seq_length] * count, num_image_patches=[1] * count)

    def _preprocess_images(self, images: list, return_tensors, image_kwargs: dict, limits: dict):
        """Decode (`load_image_rgb`, with its size limits), pad to a square and resize at bounded cost
        (`pad_to_square_and_resize`, the pixels of the image processor's own pad-then-resize), then let the image
        processor finish (its pad and resize are no-ops on the square it gets; crop, rescale, normalise)."""
        rgb = [load_image_rgb(image, name=f"image {i}", **limits) for i, image in enumerate(images)]
        square = _square_resize_settings(self.image_processor, image_kwargs)
        if square is not None:
            side, fill, resample = square
            rgb = [
                pad_to_square_and_resize(image, side, fill, resample) if isinstance(image, PIL.Image.Image) else image
                for image in rgb
            ]
        return self.image_processor(rgb, return_tensors=return_tensors, **image_kwargs)["pixel_values"]

    def _split_kwargs(self, kwargs: dict) -> tuple[dict, dict, dict, bool]:
        """
        Flatten `__call__`'s options (top level, `text_kwargs=`, `images_kwargs=`, `common_kwargs=`,
        `processor_kwargs=`; a later level wins) and sort them.

        Returns:
            `(text_kwargs, image_kwargs, limits, return_offsets)`: the tokenizer's options, the image processor's,
            the image limits (`max_image_pixels`/`max_image_aspect_ratio` as `load_image_rgb`'s `max_pixels`/
            `max_aspect_ratio`) and `return_text_replacement_offsets` (true when any level asks for it).
        """
        kwargs = dict(kwargs)
        return_offsets = bool(kwargs.pop("return_text_replacement_offsets", False))
        for nested in ("text_kwargs", "images_kwargs", "common_kwargs", "processor_kwargs"):
            level = dict(kwargs.pop(nested, None) or {})
            return_offsets = bool(level.pop("return_text_replacement_offsets", False)) or return_offsets
            kwargs.update(level)
        limits = {name: kwargs.pop(key) for key, name in _IMAGE_LIMIT_KWARGS.items() if key in kwargs}
        kwargs.pop("videos_kwargs", None)
        kwargs.pop("audio_kwargs", None)
        text_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _TEXT_KWARGS}
        image_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _IMAGE_KWARGS}
        unknown = [k for k in kwargs if k not in _IGNORED_KWARGS]
        if unknown:
            raise TypeError(
                f"SQLlavaProcessor got unexpected arguments {sorted(unknown)}; tokenizer options are "
                f"{sorted(_TEXT_KWARGS)} and image options {sorted(_IMAGE_KWARGS)}."
            )
        return text_kwargs, image_kwargs, limits, return_offsets

    def _tokenize_batch(
        self,
        texts: list[str],
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_offsets_mapping: bool = False,
        add_special_tokens: bool = True,
    ) -> dict[str, list]:
        encoded = [self._encode(t, add_special_tokens=add_special_tokens) for t in texts]
        all_ids = [ids for ids, _ in encoded]
        all_offsets = [offsets for _, offsets in encoded]
        if truncation not in (None, False, "do_not_truncate") and max_length is not None:
            for i, ids in enumerate(all_ids):
                if len(ids) > max_length:
                    kept = ids[:max_length].count(self.image_token_id)
                    if kept != ids.count(self.image_token_id):
                        raise ValueError(
                            f"Truncating sample {i} from {len(ids)} to max_length={max_length} tokens would cut "
                            f"image tokens ({kept} of {ids.count(self.image_token_id)} kept): raise `max_length`."
                        )
                    all_ids[i], all_offsets[i] = ids[:max_length], all_offsets[i][:max_length]
        masks = [[1] * len(ids) for ids in all_ids]
        if padding not in (False, None, "do_not_pad"):
            if padding == "max_length":
                if max_length is None:
                    raise ValueError("`padding='max_length'` needs `max_length`.")
                target = max_length
            else:
                target = max(len(ids) for ids in all_ids)
            if pad_to_multiple_of:
                target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
            pad_id = self.tokenizer.pad_token_id
            if pad_id is None:
                raise ValueError("The tokenizer has no pad token: call `add_sqllava_special_tokens(tokenizer)`.")
            side = padding_side or self.tokenizer.padding_side
            for i in range(len(all_ids)):
                n = target - len(all_ids[i])
                if n <= 0:
                    continue
                if side == "left":
                    all_ids[i] = [pad_id] * n + all_ids[i]
                    masks[i] = [0] * n + masks[i]
                    all_offsets[i] = [(0, 0)] * n + all_offsets[i]
                else:
                    all_ids[i] = all_ids[i] + [pad_id] * n
                    masks[i] = masks[i] + [0] * n
                    all_offsets[i] = all_offsets[i] + [(0, 0)] * n
        out: dict[str, list] = {"input_ids": all_ids}
        if return_attention_mask is None or return_attention_mask:
            out["attention_mask"] = masks
        if return_offsets_mapping:
            out["offset_mapping"] = all_offsets
        return out

    # ----------------------------------------------------------------------------------------------- chat/decoding
    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        """
        Render (and optionally tokenize) conversations with the SQ-LLaVA template.

        Besides the usual arguments (`add_generation_prompt`, `tokenize`, `return_dict`,
        `return_assistant_tokens_mask` ...), the template takes `generation_role="assistant" | "vuser"` (with
        `add_generation_prompt=True`, end with `ASSISTANT:` to answer or `VUSER:` to make the model ask a question),
        `system_prompt=` (used when there is no system message) and `mode="chat" | "plain"`.
        """
        batched = (
            isinstance(conversation, (list, tuple))
            and len(conversation) > 0
            and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages"))
        )
        conversations = conversation if batched else [conversation]
        conversations = [getattr(c, "messages", c) for c in conversations]
        mode = kwargs.get("mode") or "chat"
        for messages in conversations:
            validate_messages(messages, mode)
        generation_role = kwargs.get("generation_role") or "assistant"
        if generation_role not in ("assistant", "vuser"):
            raise ValueError(f"`generation_role` must be 'assistant' or 'vuser', got {generation_role!r}.")
        if _DECLARE_SUBPROCESSOR_CLASSES and kwargs.get("tokenize"):
            # transformers 4.x collects images from list contents only; string contents become one text part.
            conversations = [
                [
                    {**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str) else m
                    for m in messages
                ]
                for messages in conversations
            ]
            conversation = conversations if batched else conversations[0]
        want_mask = bool(kwargs.get("tokenize")) and bool(kwargs.pop("return_assistant_tokens_mask", False))
        if want_mask:
            # transformers builds this mask from a fast tokenizer's offsets; the trained spans of this template are
            # known exactly (`render_conversation`), so the mask is the processor's own training roles.
            if not kwargs.get("return_dict"):
                raise ValueError(
                    "`return_assistant_tokens_mask=True` needs `return_dict=True` (it adds `assistant_masks`)."
                )
            if chat_template not in (None, self.chat_template):
                raise ValueError(
                    "`return_assistant_tokens_mask=True` works with the SQ-LLaVA template only; drop `chat_template=`."
                )
        output = super().apply_chat_template(conversation, chat_template, **kwargs)
        if want_mask:
            output["assistant_masks"] = self._assistant_masks(conversations, output["input_ids"], mode, kwargs)
        return output

    def _assistant_masks(self, conversations: list, input_ids, mode: str, kwargs: dict):
        """1 for the tokens of the answers and vuser questions (generation blocks), per conversation, padded like
        `input_ids`."""
        rows = input_ids.tolist() if hasattr(input_ids, "tolist") else [list(row) for row in input_ids]
        side = kwargs.get("padding_side") or self.tokenizer.padding_side
        masks = []
        for messages, row in zip(conversations, rows):
            text, spans = render_conversation(
                messages,
                mode,
                kwargs.get("system_prompt"),
                bool(kwargs.get("add_generation_prompt")),
                kwargs.get("generation_role") or "assistant",
                bos_token=self.tokenizer.bos_token,
            )
            mask = [int(role != ROLE_UNTRAINED) for role in self._ids_and_roles(text, spans)[1]]
            if len(mask) > len(row):
                raise ValueError(
                    f"The assistant mask has {len(mask)} tokens for a prompt of {len(row)}: do not truncate with "
                    "`return_assistant_tokens_mask=True`."
                )
            padding = [0] * (len(row) - len(mask))
            masks.append(padding + mask if side == "left" else mask + padding)
        if type(input_ids).__module__.startswith("torch"):
            import torch

            return torch.tensor(masks, dtype=torch.long)
        if isinstance(input_ids, np.ndarray):
            return np.array(masks, dtype=np.int64)
        return masks

    def post_process_generation(self, text: str | list[str]) -> str | list[str]:
        """
        Clean a generated answer or question: keep the text before the first `</s>` or before a new turn's role
        tag, drop a leading role tag (`ASSISTANT:`, `VUSER:`, `USER:`) and surrounding whitespace.

        Args:
            text (`str` or `list[str]`): decoded generation(s), with or without special tokens.
        """
        if isinstance(text, (list, tuple)):
            return [self.post_process_generation(t) for t in text]
        text = text.replace(self.image_token, "")
        pad = self.tokenizer.pad_token
        if pad:
            text = text.replace(pad, "")
        text = text.split(self.tokenizer.eos_token or "</s>", 1)[0].strip()
        text = _LEADING_TAG.sub("", text)
        text = _NEXT_TURN.split(text, 1)[0]
        return text.strip()

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """
        Decode generated token ids, one string per sequence: the hook `pipeline("image-text-to-text")` decodes with.

        The model writes a space after `ASSISTANT:` / `VUSER:` (it is trained to: generation starts right after the
        tag). The pipeline cuts the decoded prompt off the decoded full sequence, so that space used to start every
        reply it returned (`" Yes."`). It is dropped after the last role tag of a sequence (the tag generation
        started from), and at the start of a sequence that holds only new tokens.

        Args:
            generated_outputs (`torch.Tensor`, `np.ndarray` or `list`): token ids, `(batch, length)` or `(length,)`.
            skip_special_tokens (`bool`, *optional*, defaults to `True`): passed to the tokenizer's decoding.
            kwargs: passed to the tokenizer's `batch_decode`.

        Returns:
            `list[str]` (or `str` for a single sequence).
        """
        ids = generated_outputs.tolist() if hasattr(generated_outputs, "tolist") else list(generated_outputs)
        single = bool(ids) and isinstance(ids[0], int)
        sequences = [ids] if single else ids
        if not skip_special_tokens:
            # transformers 5's pipeline decodes with the special tokens when the tokenizer has a response template
            # (it parses the reply's role from them); the `</s>` that ended the generation and the padding after it
            # are still not part of the reply it returns.
            ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
            sequences = [_without_trailing(sequence, ends) for sequence in sequences]
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        texts = [_drop_reply_space(text) for text in texts]
        return texts[0] if single else texts

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


_LEADING_TAG = re.compile(r"^(?:(?:USER|ASSISTANT|VUSER)\s*:\s*)+")
_GENERATION_TAG = re.compile(REPLY_TAG_PATTERN)


def _without_trailing(ids: list[int], ends: set[int]) -> list[int]:
    end = len(ids)
    while end and ids[end - 1] in ends:
        end -= 1
    return ids[:end]


def _drop_reply_space(text: str) -> str:
    """`"... ASSISTANT: Yes."` -> `"... ASSISTANT:Yes."` after the last generation tag; `" Yes."` -> `"Yes."`."""
    last = None
    for last in _GENERATION_TAG.finditer(text):
        pass
    if last is None:
        return text.lstrip(" ")
    end = last.end()
    rest = text[end:]
    if rest.strip():
        return text[:end] + rest.lstrip(" ")
    return text


_NEXT_TURN = re.compile(r"\s*\b(?:USER|ASSISTANT|VUSER)\s*:")


SQLlavaProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "LLAVA_SYSTEM_PROMPT",
    "MAX_IMAGE_ASPECT_RATIO",
    "MAX_IMAGE_PIXELS",
    "SQ_SYSTEM_PROMPT",
    "ImageLimitError",
    "SQLlavaProcessor",
    "add_sqllava_special_tokens",
    "build_image_processor",
    "check_image_limits",
    "load_image_rgb",
    "pad_to_square_and_resize",
    "render_conversation",
    "validate_messages",
]
