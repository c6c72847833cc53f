"""SQ-LLaVA: LLaVA-1.5 with a prototype-extractor projector, as a transformers model.

Read top to bottom: the vision tower (CLIP, only the layers that are used), the prototype extractor, the projector,
then the model classes. This file is shipped to the Hub next to `configuration_sqllava.py` and loaded with
`trust_remote_code=True`; it imports only torch and transformers, and the same file runs on transformers 4.57.x and
5.x. Where the two versions differ (cache argument names, output fields, init helpers) the code says so.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
)
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPVisionEmbeddings

from .configuration_sqllava import FEATURE_SELECT_STRATEGIES, SQLlavaConfig, vision_layer_index

try:  # transformers 5.x: init helpers that skip parameters already loaded from a checkpoint (`_is_hf_initialized`)
    from transformers import initialization as init
except ImportError:  # transformers 4.x: from_pretrained only initialises modules with missing weights
    from torch.nn import init


# 5.x renamed the KV cache `past_key_values` to `cache` (argument and output field); each version uses its own name.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
_TRANSFORMERS_5 = _CACHE_FIELD == "cache"
# 4.x's CLIP attention returns its weights only when asked; 5.x's always does (and takes no such argument).
_CLIP_ENCODER_TAKES_OUTPUT_ATTENTIONS = "output_attentions" in inspect.signature(CLIPEncoder.forward).parameters


@dataclass
class SQLlavaModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` (of the installed transformers) plus the image encoder's outputs.

    Args:
        image_hidden_states (`torch.FloatTensor` of shape `(num_images, image_seq_length, text_hidden_size)`, *optional*):
            Projector outputs spliced into the sequence, when `pixel_values` were given.
        image_outputs (`BaseModelOutputWithPooling`, *optional*):
            What [`SQLlavaModel.get_image_features`] returns (the field 5.x's LLaVA outputs carry): the vision tower's
            `last_hidden_state` and the projected features as `pooler_output`, when `pixel_values` were given.
    """

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


@dataclass
class SQLlavaCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` (of the installed transformers) plus the image encoder's outputs.

    Args:
        image_hidden_states (`torch.FloatTensor` of shape `(num_images, image_seq_length, text_hidden_size)`, *optional*):
            Projector outputs spliced into the sequence, when `pixel_values` were given.
        image_outputs (`BaseModelOutputWithPooling`, *optional*): see [`SQLlavaModelOutputWithPast`].
    """

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


class SQLlavaVisionTower(nn.Module):
    """CLIP vision transformer truncated to the layers that produce `config.vision_feature_layer`.

    Parameter names are the same on every transformers version (`embeddings.*`, `pre_layrnorm.*`,
    `encoder.layers.{i}.*`): 5.x's `CLIPVisionModel` dropped the `vision_model.` level that 4.x has, so a
    checkpoint of `AutoModel.from_config(vision_config)` would not load across versions. There is no
    `post_layernorm` and no layer after the selected one, so every parameter receives a gradient (DDP, LoRA).

    Args:
        config (`SQLlavaConfig`): the model config; its `vision_config` is shared (not copied) with the CLIP modules
            so that attention-implementation changes on the config reach them.
    """

    def __init__(self, config: SQLlavaConfig):
        super().__init__()
        vision_config = config.vision_config
        self.config = vision_config
        self.image_size = vision_config.image_size
        self.num_channels = vision_config.num_channels
        self.select_strategy = config.vision_feature_select_strategy
        self.embeddings = CLIPVisionEmbeddings(vision_config)
        self.pre_layrnorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.encoder = CLIPEncoder(vision_config)
        # Built with the shared config, then truncated: layer -2 of 24 keeps layers 0..22.
        self.encoder.layers = self.encoder.layers[: config.num_vision_layers]

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = False,
    ) -> torch.Tensor | BaseModelOutput:
        """Patch features of the selected layer, `(num_images, tokens, vision_hidden_size)` (CLS dropped for
        "default"); with `return_dict=True`, a `BaseModelOutput` holding all its tokens instead (CLS first).

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, 3, image_size, image_size)`): preprocessed images.
            output_hidden_states (`bool`, *optional*, defaults to `False`): with `return_dict=True`, also return
                `hidden_states`: the embeddings after `pre_layrnorm`, then each built layer's output
                (`num_vision_layers + 1` tensors; the last one is `last_hidden_state`).
            output_attentions (`bool`, *optional*, defaults to `False`): with `return_dict=True`, also return each
                built layer's attention probabilities, `(num_images, heads, tokens, tokens)` (eager attention only).
            return_dict (`bool`, *optional*, defaults to `False`): see above.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (self.num_channels, self.image_size, self.image_size):
            raise ValueError(
                f"`pixel_values` has shape {tuple(pixel_values.shape)}, expected (num_images, {self.num_channels}, "
                f"{self.image_size}, {self.image_size}) (vision_config.image_size={self.image_size}); preprocess "
                "images with the model's processor."
            )
        hidden_states = self.embeddings(pixel_values.to(self.embeddings.patch_embedding.weight.dtype))
        hidden_states = self.pre_layrnorm(hidden_states)
        # Each layer's output and attention weights are recorded with forward hooks: the same tensors on 4.x (whose
        # encoder could return them itself) and on 5.x (whose encoder leaves recording to the CLIPVisionModel wrapper
        # this tower does not use). The hooks live only for this call, so a gradient-checkpointing recomputation in
        # backward records nothing.
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None

        def record_hidden_state(module, args, output):
            all_hidden_states.append(output[0] if isinstance(output, tuple) else output)  # 4.x layers return tuples

        def record_attention(module, args, output):
            all_attentions.append(output[1])  # CLIPAttention returns (output, weights) on both versions

        hooks = []
        for layer in self.encoder.layers:
            if output_hidden_states:
                hooks.append(layer.register_forward_hook(record_hidden_state))
            if output_attentions:
                hooks.append(layer.self_attn.register_forward_hook(record_attention))
        encoder_kwargs = {}
        if output_attentions and _CLIP_ENCODER_TAKES_OUTPUT_ATTENTIONS:
            encoder_kwargs["output_attentions"] = True
        try:
            hidden_states = self.encoder(inputs_embeds=hidden_states, **encoder_kwargs).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        if output_attentions and any(weights is None for weights in all_attentions):
            raise ValueError(
                f"`output_attentions=True` needs the vision tower's attention weights, which "
                f"attn_implementation={self.config._attn_implementation!r} does not compute; load the model with "
                "`attn_implementation='eager'`."
            )
        if not return_dict:
            return hidden_states[:, 1:] if self.select_strategy == "default" else hidden_states
        return BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )


class SQLlavaPrototypeExtractor(nn.Module):
    r"""SQ-LLaVA's prototype extractor: enhances each patch feature with the centre of its visual cluster.

    With X the `(B, L, D)` patch features, K prototypes and T iterations:
    `V = normalize_L(v(X))`, `F = f(X)`, `C = P(X)`, `C_F = P(F)` (P: adaptive average pooling L -> K over tokens);
    T times `C = c(C)`, `A = softmax_K(normalize_D(C) V^T)`, `C = A F`;
    `S = sigmoid(beta + alpha cos(C, X))`, `M` = one-hot of `argmax_K S`, `S' = S * M`;
    `U = (S' F + C_F) / (M 1 + 1)`; output `X + S'^T U` (same shape as X).

    Everything is a `(B, K, L)` or `(B, K, D)` matrix product: the public reference implementation materialises
    `(B, K, L, D)` products, which costs gigabytes at 7B scale.

    Released-checkpoint key mapping (done by the converter): `c.* -> c.*`, `v.* -> v.*`, `f.* -> f.*`,
    `sim_alpha`/`sim_beta` (shape `(1, 1, 1)`) -> `sim_alpha`/`sim_beta` (scalars); the unused `ln_1.*` is dropped
    and `mlp.0.*` / `mlp.2.*` belong to the projector's `linear_1.*` / `linear_2.*`.

    Args:
        hidden_size (`int`): feature width D.
        num_prototypes (`int`): K.
        num_iterations (`int`): T.
    """

    def __init__(self, hidden_size: int, num_prototypes: int, num_iterations: int):
        super().__init__()
        self.num_prototypes = num_prototypes
        self.num_iterations = num_iterations
        self.v = nn.Linear(hidden_size, hidden_size)
        self.f = nn.Linear(hidden_size, hidden_size)
        self.c = nn.Linear(hidden_size, hidden_size)
        self.sim_alpha = nn.Parameter(torch.ones(()))
        self.sim_beta = nn.Parameter(torch.zeros(()))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states
        # The released weights were trained with V normalised along the token axis (per channel), not per token.
        values = functional.normalize(self.v(x), dim=1)  # (B, L, D)
        features = self.f(x)  # (B, L, D)
        # AdaptiveAvgPool1d over tokens: uneven, overlapping windows when K does not divide L (576 -> 256).
        centers = functional.adaptive_avg_pool1d(x.transpose(1, 2), self.num_prototypes).transpose(1, 2)  # (B, K, D)
        centers_features = functional.adaptive_avg_pool1d(features.transpose(1, 2), self.num_prototypes).transpose(
            1, 2
        )  # (B, K, D)
        for _ in range(self.num_iterations):
            centers = self.c(centers)
            logits = functional.normalize(centers, dim=-1) @ values.transpose(1, 2)  # (B, K, L)
            # Half precision softmax over 256 centres is upcast; float32/float64 stay exact.
            assignment = torch.softmax(
                logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, 1
            )
            centers = assignment.to(features.dtype) @ features  # (B, K, D)
        cosine = functional.normalize(centers, dim=-1) @ functional.normalize(x, dim=-1).transpose(1, 2)  # (B, K, L)
        similarity = torch.sigmoid(self.sim_beta + self.sim_alpha * cosine)
        # Hard assignment: each token keeps only its most similar centre (ties -> lowest index, like torch.max).
        best = similarity.argmax(dim=1)  # (B, L)
        mask = functional.one_hot(best, self.num_prototypes).transpose(1, 2).to(similarity.dtype)  # (B, K, L)
        similarity = similarity * mask
        center_values = (similarity @ features + centers_features) / (mask.sum(dim=-1, keepdim=True) + 1.0)
        return x + similarity.transpose(1, 2) @ center_values  # (B, L, D)


class SQLlavaMultiModalProjector(nn.Module):
    """Maps patch features to the language model width.

    `"prototype"`: `SQLlavaPrototypeExtractor` -> Linear(D, H) -> QuickGELU -> Linear(H, H) (SQ-LLaVA).
    `"mlp2x_gelu"`: Linear(D, H) -> GELU -> Linear(H, H) (LLaVA-1.5).

    Args:
        config (`SQLlavaConfig`): the model config.
    """

    def __init__(self, config: SQLlavaConfig):
        super().__init__()
        vision_size = config.vision_config.hidden_size
        text_size = config.text_config.hidden_size
        if config.projector_type == "prototype":
            self.extractor = SQLlavaPrototypeExtractor(vision_size, config.num_prototypes, config.prototype_iterations)
            act = "quick_gelu"
        else:
            self.extractor = None
            act = "gelu"
        self.linear_1 = nn.Linear(vision_size, text_size)
        self.act = QuickGELU() if act == "quick_gelu" else nn.GELU()
        self.linear_2 = nn.Linear(text_size, text_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        if self.extractor is not None:
            image_features = self.extractor(image_features)
        return self.linear_2(self.act(self.linear_1(image_features)))


class QuickGELU(nn.Module):
    """`x * sigmoid(1.702 x)`, the activation of SQ-LLaVA's projector MLP (as in CLIP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SQLlavaPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the capability flags shared by the SQ-LLaVA model classes."""

    config_class = SQLlavaConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPVisionEmbeddings", "LlamaDecoderLayer", "SQLlavaMultiModalProjector"]  # noqa: RUF012
    _skip_keys_device_placement = ["past_key_values", "cache"]  # noqa: RUF012
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _supports_cache_class = True
    _supports_static_cache = True
    _can_compile_fullgraph = True

    def _init_weights(self, module: nn.Module):
        # Generic Linear/Embedding/norm init (and 5.x's rotary buffers), then the modules it does not know.
        super()._init_weights(module)
        vision_config = self.config.vision_config
        factor = vision_config.initializer_factor
        if isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, mean=0.0, std=module.embed_dim**-0.5 * factor)
            init.normal_(module.patch_embedding.weight, std=vision_config.initializer_range * factor)
            init.normal_(module.position_embedding.weight, std=vision_config.initializer_range * factor)
            if hasattr(init, "copy_"):  # 5.x builds non-persistent buffers on the meta device when loading
                init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, SQLlavaPrototypeExtractor):
            init.ones_(module.sim_alpha)
            init.zeros_(module.sim_beta)

    def enable_input_require_grads(self):
        """Make the token embeddings' and the patch embeddings' outputs require grad.

        Needed for adapters or reentrant gradient checkpointing on frozen towers: without it the first checkpointed
        layer of either tower receives inputs that do not require grad, and its LoRA weights get no gradient.
        """

        def make_inputs_require_grads(module, inputs, output):
            output.requires_grad_(True)

        modules = [self.get_input_embeddings(), self.get_vision_tower().embeddings]
        self._require_grads_hooks = [module.register_forward_hook(make_inputs_require_grads) for module in modules]
        self._require_grads_hook = self._require_grads_hooks[0]  # the attribute name transformers 4.x uses

    def disable_input_require_grads(self):
        for hook in getattr(self, "_require_grads_hooks", []):
            hook.remove()
        self._require_grads_hooks = []

    def get_vision_tower(self) -> SQLlavaVisionTower:
        return self.model.vision_tower if hasattr(self, "model") else self.vision_tower


class SQLlavaModel(SQLlavaPreTrainedModel):
    """Vision tower + projector + language model (no LM head): returns the language model's hidden states.

    Args:
        config (`SQLlavaConfig`): the model config.
    """

    def __init__(self, config: SQLlavaConfig):
        super().__init__(config)
        # The tower is not a PreTrainedModel, so nothing resolves its config's attention implementation: it takes the
        # one resolved for this model (sdpa by default), unless one was requested for `vision_config` explicitly.
        if config.vision_config._attn_implementation is None:
            config.vision_config._attn_implementation = config._attn_implementation
        self.vision_tower = SQLlavaVisionTower(config)
        self.multi_modal_projector = SQLlavaMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model

    def set_decoder(self, decoder: nn.Module):
        self.language_model = decoder

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple | list[torch.Tensor]:
        r"""Projected image features, with the conventions of the installed transformers' LLaVA.

        transformers 5.x (and any caller passing `return_dict=True`, as vLLM's Transformers backend does) gets a
        `BaseModelOutputWithPooling`: `pooler_output` holds the projected features, one
        `(image_seq_length, text_hidden_size)` tensor per image (a list, as 5.x's LLaVA returns it);
        `last_hidden_state` is the vision tower's output at `vision_feature_layer` with the CLS token,
        `(num_images, 1 + patches, vision_hidden_size)`; `hidden_states`/`attentions` are the built tower layers' (the
        tower ends at `vision_feature_layer`, so `hidden_states[-1]` is LLaVA's `hidden_states[vision_feature_layer]`).
        `return_dict=False` on 5.x gives the same as a tuple. transformers 4.x without `return_dict=True` gets what
        4.57's LLaVA returns: the list of per-image projected features.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, 3, image_size, image_size)`): preprocessed images.
            vision_feature_layer (`int`, *optional*): must be `config.vision_feature_layer` (or `None`): the layers
                after it are not built.
            vision_feature_select_strategy (`str`, *optional*): `"default"` drops the CLS token, `"full"` keeps it;
                defaults to `config.vision_feature_select_strategy` (whose token count the placeholders follow).
            output_hidden_states (`bool`, *optional*): return the tower's hidden states; defaults to the config's.
            output_attentions (`bool`, *optional*): return the tower's attentions (eager attention); defaults to the
                config's.
            return_dict (`bool`, *optional*): see above; defaults to `config.return_dict` on 5.x.
        """
        unexpected = sorted(name for name, value in kwargs.items() if value is not None)
        if unexpected:
            raise TypeError(
                f"get_image_features() got unsupported arguments {unexpected}; SQ-LLaVA takes `pixel_values` "
                "(num_images, 3, image_size, image_size) only (no `image_sizes`: images are padded to a square)."
            )
        image_outputs, _ = self._encode_images(
            pixel_values, vision_feature_layer, vision_feature_select_strategy, output_hidden_states, output_attentions
        )
        if return_dict is None and not _TRANSFORMERS_5:
            return image_outputs.pooler_output  # 4.57's LLaVA: a list of per-image features
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        return image_outputs if return_dict else image_outputs.to_tuple()

    def _encode_images(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """`get_image_features`' output and the same projected features as one `(num_images, rows, width)` tensor."""
        config = self.config
        if vision_feature_layer is not None:
            index = vision_layer_index(vision_feature_layer, config.vision_config.num_hidden_layers)
            if index != config.num_vision_layers:
                raise ValueError(
                    f"`vision_feature_layer`={vision_feature_layer} differs from config.vision_feature_layer="
                    f"{config.vision_feature_layer}: the tower is built only up to that layer; drop the argument."
                )
        strategy = vision_feature_select_strategy or config.vision_feature_select_strategy
        if strategy not in FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"`vision_feature_select_strategy`={strategy!r} is not supported; use one of "
                f"{FEATURE_SELECT_STRATEGIES} ('default' drops the CLS token)."
            )
        if output_hidden_states is None:
            output_hidden_states = getattr(config, "output_hidden_states", False)
        if output_attentions is None:
            output_attentions = getattr(config, "output_attentions", False)
        tower_outputs = self.vision_tower(
            pixel_values,
            output_hidden_states=bool(output_hidden_states),
            output_attentions=bool(output_attentions),
            return_dict=True,
        )
        selected = tower_outputs.last_hidden_state
        features = self.multi_modal_projector(selected[:, 1:] if strategy == "default" else selected)
        image_outputs = BaseModelOutputWithPooling(
            last_hidden_state=tower_outputs.last_hidden_state,
            pooler_output=list(features),  # views of `features`, one per image
            hidden_states=tower_outputs.hidden_states,
            attentions=tower_outputs.attentions,
        )
        return image_outputs, features

    def _image_token_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embedding).all(-1)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> SQLlavaModelOutputWithPast | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids; each `<image>` (`config.image_token_id`) receives one projected image feature row.
            pixel_values (`torch.FloatTensor` of shape `(num_images, 3, image_size, image_size)`, *optional*):
                Preprocessed images, in the order of their placeholders in the batch.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*): 1 for real tokens.
            position_ids (`torch.LongTensor`, *optional*): positions, e.g. for left-padded batches.
            inputs_embeds (`torch.FloatTensor`, *optional*): instead of `input_ids`.
            kwargs: passed unchanged to the language model (`past_key_values`/`cache_position` on transformers 4.x,
                `cache` on 5.x, `use_cache`, `output_hidden_states`, ...).
        """
        return_dict = kwargs.pop("return_dict", None)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = image_outputs = None
        if pixel_values is not None:
            # As LLaVA does, the tower's hidden states / attentions are computed when the caller asks for the
            # language model's.
            image_outputs, image_features = self._encode_images(
                pixel_values,
                output_hidden_states=kwargs.get("output_hidden_states"),
                output_attentions=kwargs.get("output_attentions"),
            )
            image_mask = self._image_token_mask(input_ids, inputs_embeds)
            num_tokens = int(image_mask.sum())
            num_features = image_features.shape[0] * image_features.shape[1]
            if num_tokens != num_features:
                raise ValueError(
                    f"Image features and image tokens do not match: tokens: {num_tokens}, features: {num_features} "
                    f"({image_features.shape[0]} image(s) x {image_features.shape[1]} rows); each image needs "
                    f"exactly {self.config.image_seq_length} `<image>` tokens (use the SQ-LLaVA processor)."
                )
            inputs_embeds = inputs_embeds.masked_scatter(
                image_mask.unsqueeze(-1).to(inputs_embeds.device),
                image_features.to(inputs_embeds.device, inputs_embeds.dtype),
            )
        elif input_ids is not None and kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            # Without a cache this is a full forward (training, scoring): placeholders then need their images.
            num_tokens = int((input_ids == self.config.image_token_id).sum())
            if num_tokens:
                raise ValueError(
                    f"Image features and image tokens do not match: tokens: {num_tokens}, features: 0; pass the "
                    "`pixel_values` of the images whose `<image>` placeholders are in `input_ids`."
                )

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        output = SQLlavaModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            image_outputs=image_outputs,
            **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD, None)},
        )
        return output.to_tuple() if return_dict is False else output


class SQLlavaForConditionalGeneration(SQLlavaPreTrainedModel, GenerationMixin):
    """SQ-LLaVA for image-conditioned generation and training: `SQLlavaModel` + LM head.

    Args:
        config (`SQLlavaConfig`): the model config.

    Example:

    ```python
    >>> from modeling_sqllava import SQLlavaConfig, SQLlavaForConditionalGeneration
    >>> model = SQLlavaForConditionalGeneration.from_vision_text_pretrained(
    ...     "openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5", tokenizer=tokenizer
    ... )
    >>> out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"), max_new_tokens=32)
    ```
    """

    def __init__(self, config: SQLlavaConfig):
        super().__init__(config)
        self.model = SQLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def get_decoder(self) -> nn.Module:
        return self.model.get_decoder()

    def set_decoder(self, decoder: nn.Module):
        self.model.set_decoder(decoder)

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    @property
    def vision_tower(self) -> SQLlavaVisionTower:
        return self.model.vision_tower

    @property
    def multi_modal_projector(self) -> SQLlavaMultiModalProjector:
        return self.model.multi_modal_projector

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple | list[torch.Tensor]:
        """Projected image features; see [`SQLlavaModel.get_image_features`]."""
        return self.model.get_image_features(
            pixel_values,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            **kwargs,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> SQLlavaCausalLMOutputWithPast | tuple:
        r"""
        Args:
            input_ids, pixel_values, attention_mask, position_ids, inputs_embeds: see [`SQLlavaModel.forward`].
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Targets for the causal LM loss (shifted inside; -100 is ignored). The loss is the mean over labelled
                tokens, or the sum divided by `num_items_in_batch` when that keyword is given.
            logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0):
                Compute logits only for the last `logits_to_keep` positions (0 = all), or for these indices.
            kwargs: passed unchanged to the language model (cache arguments of the installed transformers, ...).
        """
        return_dict = kwargs.pop("return_dict", None)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        output = SQLlavaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            image_outputs=outputs.image_outputs,
            **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)},
        )
        return output.to_tuple() if return_dict is False else output

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values=None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        # The cache is a named parameter (not only part of **kwargs) because generate() accepts a caller's cache only
        # when this signature or forward's names it ("model_kwargs are not used by the model" otherwise).
        if _TRANSFORMERS_5:
            cache_kwargs = {"cache": cache if cache is not None else past_key_values}
        elif cache is not None:
            raise ValueError(
                "transformers 4.x names the KV cache `past_key_values`; pass `past_key_values=` instead of `cache=`."
            )
        else:
            cache_kwargs = {"past_key_values": past_key_values}
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **cache_kwargs, **kwargs
        )
        # An image goes to the forward whose inputs hold its `<image>` placeholders: the prefill, or every step when
        # generating without a cache. Not to one-token decoding steps (a generated `<image>` id is a plain token
        # there), nor to a prefill that continues a cache already holding the image (prefix caching, assisted
        # decoding's later rounds), whose new tokens hold no placeholder. A prefill from `inputs_embeds` has no ids:
        # it gets the images, which its embeddings must then hold placeholders for.
        if pixel_values is not None:
            step_ids = model_inputs.get("input_ids")
            if step_ids is None or (step_ids.shape[-1] > 1 and bool((step_ids == self.config.image_token_id).any())):
                model_inputs["pixel_values"] = pixel_values
        return model_inputs

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_path: str,
        text_path: str,
        tokenizer=None,
        *,
        dtype: torch.dtype | None = None,
        pad_to_multiple_of: int = 64,
        **config_kwargs,
    ) -> SQLlavaForConditionalGeneration:
        r"""Stage-1 model from a pretrained CLIP tower and a pretrained Llama, with a freshly initialised projector.

        Each tower is loaded with the installed transformers' own loader (`CLIPVisionModel`, `AutoModelForCausalLM`),
        so their checkpoint layouts are handled by that version; the weights are then copied into the SQ-LLaVA
        modules (the CLIP layers after `vision_feature_layer` are not kept). When `tokenizer` is given, `<image>` is
        added to it (and `<pad>`, when it has no pad token), and the embeddings are resized to `len(tokenizer)`
        rounded up to `pad_to_multiple_of`: on Vicuna, `<image>` = 32000, `<pad>` = 32001, vocabulary 32064.

        Args:
            vision_path (`str`): Hub id or folder of a `CLIPVisionModel` or a full `CLIPModel`.
            text_path (`str`): Hub id or folder of a Llama causal LM (e.g. `lmsys/vicuna-7b-v1.5`).
            tokenizer (`PreTrainedTokenizerBase`, *optional*): modified in place as described above.
            dtype (`torch.dtype`, *optional*): dtype to load both towers in.
            pad_to_multiple_of (`int`, *optional*, defaults to 64): vocabulary padding.
            config_kwargs: other `SQLlavaConfig` arguments (`projector_type`, `num_prototypes`,
                `attn_implementation`, ...). Without a tokenizer, `image_token_id`/`pad_token_id` may be given here.

        Example:

        ```python
        >>> tokenizer = AutoTokenizer.from_pretrained("lmsys/vicuna-7b-v1.5")
        >>> model = SQLlavaForConditionalGeneration.from_vision_text_pretrained(
        ...     "openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5", tokenizer=tokenizer
        ... )
        >>> model.config.image_token_id, model.config.pad_token_id, model.config.text_config.vocab_size
        (32000, 32001, 32064)
        ```
        """
        from transformers import AutoModelForCausalLM, CLIPVisionModel

        load_kwargs = {"dtype": dtype} if dtype is not None else {}
        vision = CLIPVisionModel.from_pretrained(vision_path, **load_kwargs)
        # A user's folder: its own code never runs (and transformers never prompts to run it).
        text = AutoModelForCausalLM.from_pretrained(text_path, trust_remote_code=False, **load_kwargs)
        text_vocab = text.get_input_embeddings().weight.shape[0]

        if tokenizer is not None:
            for name in ("image_token_id", "pad_token_id"):
                if name in config_kwargs:
                    raise ValueError(
                        f"`{name}` is taken from the tokenizer when one is given; drop `{name}={config_kwargs[name]}`."
                    )
            if "<image>" not in tokenizer.get_vocab():
                tokenizer.add_tokens(["<image>"], special_tokens=True)
            if tokenizer.pad_token is None:
                tokenizer.add_special_tokens({"pad_token": "<pad>"})
            image_token_id = tokenizer.convert_tokens_to_ids("<image>")
            pad_token_id = tokenizer.pad_token_id
            needed = len(tokenizer)
        else:
            image_token_id = config_kwargs.pop("image_token_id", text_vocab)
            pad_token_id = config_kwargs.pop("pad_token_id", getattr(text.config, "pad_token_id", None))
            if pad_token_id is None:
                pad_token_id = image_token_id + 1
            needed = max(text_vocab, image_token_id + 1, pad_token_id + 1)
        new_vocab = max(text_vocab, math.ceil(needed / pad_to_multiple_of) * pad_to_multiple_of)
        if new_vocab != text_vocab:
            # The text model's own resize gives new rows the mean of the old ones (both versions).
            text.resize_token_embeddings(new_vocab)
        text.config.pad_token_id = pad_token_id
        text.config.vocab_size = new_vocab

        config = SQLlavaConfig(
            vision_config=vision.config,
            text_config=text.config,
            image_token_id=image_token_id,
            pad_token_id=pad_token_id,
            **config_kwargs,
        )
        model = cls(config)
        source_vision = getattr(vision, "vision_model", vision)  # 4.x nests the transformer under `vision_model`
        tower = model.model.vision_tower
        tower.embeddings.load_state_dict(source_vision.embeddings.state_dict())
        tower.pre_layrnorm.load_state_dict(source_vision.pre_layrnorm.state_dict())
        for index, layer in enumerate(tower.encoder.layers):
            layer.load_state_dict(source_vision.encoder.layers[index].state_dict())
        model.model.language_model.load_state_dict(text.get_decoder().state_dict())
        model.lm_head.load_state_dict(text.get_output_embeddings().state_dict())
        if dtype is not None:
            model = model.to(dtype)
        model.generation_config.pad_token_id = pad_token_id
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(text.generation_config, name, None)
            if value is not None:
                setattr(model.generation_config, name, value)
        return model


SQLlavaModel.register_for_auto_class("AutoModel")
SQLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "SQLlavaForConditionalGeneration",
    "SQLlavaModel",
    "SQLlavaMultiModalProjector",
    "SQLlavaPreTrainedModel",
    "SQLlavaPrototypeExtractor",
    "SQLlavaVisionTower",
]
