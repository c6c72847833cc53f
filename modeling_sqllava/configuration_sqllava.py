"""SQ-LLaVA model configuration.

Shipped to the Hub next to `modeling_sqllava.py` and loaded with `trust_remote_code=True`: it imports only
transformers, and the same file works on transformers 4.57.x and 5.x (a classic `__init__(**kwargs)` config, which 5.x
still accepts for remote code).
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, AutoConfig

# What `save_pretrained` writes into `config.json` so that a folder or Hub repo loads with `trust_remote_code=True`
# through any of these Auto classes. `AutoModelForVision2Seq` is the 4.x name; 5.x ignores the entry.
SQLLAVA_AUTO_MAP = {
    "AutoConfig": "configuration_sqllava.SQLlavaConfig",
    "AutoModel": "modeling_sqllava.SQLlavaModel",
    "AutoModelForImageTextToText": "modeling_sqllava.SQLlavaForConditionalGeneration",
    "AutoModelForVision2Seq": "modeling_sqllava.SQLlavaForConditionalGeneration",
}

PROJECTOR_TYPES = ("prototype", "mlp2x_gelu")
FEATURE_SELECT_STRATEGIES = ("default", "full")


def vision_layer_index(vision_feature_layer: int, num_hidden_layers: int) -> int:
    """The non-negative hidden-state index of `vision_feature_layer` (-1 is the last of `num_hidden_layers` layers).

    Hidden state 0 is the embeddings, so index `i` is the output of encoder layer `i` and is also the number of
    encoder layers that must run to produce it.
    """
    return vision_feature_layer if vision_feature_layer >= 0 else num_hidden_layers + 1 + vision_feature_layer


# LLaVA-1.5's tower: CLIP ViT-L/14 at 336 px (576 patches of width 1024).
DEFAULT_VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
# Vicuna-7B-v1.5 with `<image>` (32000) and `<pad>` (32001) appended and the vocabulary padded to a multiple of 64.
DEFAULT_TEXT_CONFIG = {"model_type": "llama", "vocab_size": 32064, "tie_word_embeddings": False}


def _build_sub_config(value, name: str, default: dict, accepted_types: tuple[str, ...] | None):
    if value is None:
        value = dict(default)
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", default["model_type"])
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"`{name}` has model_type={model_type!r}, which this transformers does not know.")
        value = CONFIG_MAPPING[model_type](**value)
    if not isinstance(value, PretrainedConfig):
        raise TypeError(f"`{name}` must be None, a dict or a PretrainedConfig, got {type(value).__name__}.")
    # A full CLIPConfig carries the vision tower as a sub-config: accept it for convenience.
    if accepted_types is not None and value.model_type == "clip" and hasattr(value, "vision_config"):
        value = value.vision_config
    if accepted_types is not None and value.model_type not in accepted_types:
        raise ValueError(
            f"`{name}` must be a CLIP vision config (model_type in {accepted_types}), got model_type="
            f"{value.model_type!r}; pass `CLIPVisionConfig(...)` or `CLIPConfig(...).vision_config`."
        )
    return value


class SQLlavaConfig(PretrainedConfig):
    r"""
    Configuration of [`SQLlavaForConditionalGeneration`]: a CLIP vision tower, SQ-LLaVA's prototype-extractor projector
    (or LLaVA-1.5's plain MLP) and a Llama language model.

    Args:
        vision_config (`dict` or `CLIPVisionConfig`, *optional*):
            The vision tower. Defaults to CLIP ViT-L/14-336 (LLaVA-1.5). A full `CLIPConfig` is reduced to its
            `vision_config`.
        text_config (`dict` or `PretrainedConfig`, *optional*):
            The language model (a Llama config). Defaults to Llama-2-7B shapes with a 32,064-token vocabulary.
        image_token_id (`int`, *optional*, defaults to 32000):
            Id of the `<image>` placeholder token; each placeholder receives one projected image feature row.
        pad_token_id (`int`, *optional*):
            Id of the padding token; defaults to `text_config.pad_token_id`.
        vision_feature_layer (`int`, *optional*, defaults to -2):
            Index into the tower's hidden states (0 = embeddings after `pre_layrnorm`, -1 = last layer) whose output
            feeds the projector. Only the layers up to this one are built.
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            `"default"` drops the CLS token, `"full"` keeps it.
        projector_type (`str`, *optional*, defaults to `"prototype"`):
            `"prototype"` (SQ-LLaVA: prototype extractor + Linear/QuickGELU/Linear) or `"mlp2x_gelu"`
            (LLaVA-1.5: Linear/GELU/Linear).
        num_prototypes (`int`, *optional*, defaults to 256):
            Number of prototypes K of the extractor.
        prototype_iterations (`int`, *optional*, defaults to 2):
            Number of centre-update iterations T of the extractor.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Tying is not supported (Vicuna does not tie); must stay `False`.

    Example:

    ```python
    >>> from modeling_sqllava import SQLlavaConfig
    >>> config = SQLlavaConfig()
    >>> config.image_seq_length
    576
    ```
    """

    model_type = "sqllava"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}  # noqa: RUF012

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        image_token_id: int = 32000,
        pad_token_id: int | None = None,
        vision_feature_layer: int = -2,
        vision_feature_select_strategy: str = "default",
        projector_type: str = "prototype",
        num_prototypes: int = 256,
        prototype_iterations: int = 2,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        vision_config = _build_sub_config(
            vision_config, "vision_config", DEFAULT_VISION_CONFIG, accepted_types=("clip_vision_model",)
        )
        text_config = _build_sub_config(text_config, "text_config", DEFAULT_TEXT_CONFIG, accepted_types=None)

        # `image_seq_length` is derived from the vision config (never a stale constant); a given value must agree.
        stored_seq_length = kwargs.pop("image_seq_length", None)
        # LLaVA checkpoints name it `image_token_index`.
        image_token_id = kwargs.pop("image_token_index", image_token_id)

        num_layers = vision_config.num_hidden_layers
        if isinstance(vision_feature_layer, bool) or not isinstance(vision_feature_layer, int):
            raise TypeError(
                f"`vision_feature_layer` must be a single int (e.g. -2), got {vision_feature_layer!r}; "
                "multi-layer feature concatenation is not supported by SQ-LLaVA."
            )
        if not -(num_layers + 1) <= vision_feature_layer <= num_layers:
            raise ValueError(
                f"`vision_feature_layer`={vision_feature_layer} is out of range for a vision tower with {num_layers} "
                f"layers; use a value in [{-(num_layers + 1)}, {num_layers}] (LLaVA-1.5 uses -2)."
            )
        if vision_feature_select_strategy not in FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"`vision_feature_select_strategy`={vision_feature_select_strategy!r} is not supported; use one of "
                f"{FEATURE_SELECT_STRATEGIES} ('default' drops the CLS token)."
            )
        if projector_type not in PROJECTOR_TYPES:
            raise ValueError(
                f"`projector_type`={projector_type!r} is not supported; use one of {PROJECTOR_TYPES} "
                "('prototype' is SQ-LLaVA, 'mlp2x_gelu' is plain LLaVA-1.5)."
            )
        for name, value in (("num_prototypes", num_prototypes), ("prototype_iterations", prototype_iterations)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r} (SQ-LLaVA uses 256 and 2).")
        vocab_size = text_config.vocab_size
        if pad_token_id is None:
            pad_token_id = getattr(text_config, "pad_token_id", None)
        for name, value in (("image_token_id", image_token_id), ("pad_token_id", pad_token_id)):
            if value is None and name == "pad_token_id":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
                raise ValueError(
                    f"`{name}`={value!r} is not a valid id for text_config.vocab_size={vocab_size}; pass the id the "
                    "tokenizer gives this token, and resize the embeddings to cover it (see "
                    "`SQLlavaForConditionalGeneration.from_vision_text_pretrained`)."
                )
        if tie_word_embeddings or getattr(text_config, "tie_word_embeddings", False):
            raise ValueError(
                "Tied input/output embeddings are not supported (Vicuna/Llama-2 do not tie them); set "
                "`tie_word_embeddings=False` on both the SQLlavaConfig and its text_config."
            )

        self.vision_config = vision_config
        self.text_config = text_config
        self.image_token_id = image_token_id
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.projector_type = projector_type
        self.num_prototypes = num_prototypes
        self.prototype_iterations = prototype_iterations
        if "auto_map" not in kwargs:
            kwargs["auto_map"] = dict(SQLLAVA_AUTO_MAP)
        # 4.57's PretrainedConfig.__init__ assigns `pad_token_id`/`tie_word_embeddings` itself (with other defaults),
        # so they go through it rather than being set above.
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=False, **kwargs)

        if stored_seq_length is not None:
            self.image_seq_length = stored_seq_length  # the setter checks it against the vision config

    @property
    def image_seq_length(self) -> int:
        """Number of `<image>` placeholder tokens (= feature rows) per image, derived from the vision config.

        Settable, as on LLaVA's config (code written for LLaVA sets it after changing the vision config, and
        `from_pretrained(..., image_seq_length=...)` / `config.update(...)` set it too), but only to the value the
        vision config gives: the tower produces that many rows whatever the attribute says, so a different stored
        number could only make the processor and the model disagree.
        """
        patches = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        return patches + (1 if self.vision_feature_select_strategy == "full" else 0)

    @image_seq_length.setter
    def image_seq_length(self, value: int):
        if value != self.image_seq_length:
            vision = self.vision_config
            cls_token = " + 1 (CLS)" if self.vision_feature_select_strategy == "full" else ""
            raise ValueError(
                f"`image_seq_length`={value!r} disagrees with the vision config, which gives {self.image_seq_length} "
                f"image tokens (({vision.image_size} // {vision.patch_size})**2{cls_token}); it is derived: change "
                "`vision_config.image_size`/`patch_size` or `vision_feature_select_strategy` instead."
            )

    @property
    def num_vision_layers(self) -> int:
        """Number of CLIP encoder layers actually built and run to produce `vision_feature_layer`'s hidden state."""
        return vision_layer_index(self.vision_feature_layer, self.vision_config.num_hidden_layers)


SQLlavaConfig.register_for_auto_class()

__all__ = ["SQLlavaConfig"]
