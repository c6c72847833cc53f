"""SQ-LLaVA model: config validation, the prototype extractor against a float64 reference, forward/generation
behaviour, save/load, training support (gradient checkpointing, PEFT LoRA on both towers) and error messages.

Runs under transformers 5.x and 4.57.x alike (CI runs it in both environments); PEFT tests skip where peft is absent.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from modeling_sqllava import SQLlavaConfig, SQLlavaForConditionalGeneration, SQLlavaModel, SQLlavaPrototypeExtractor
from recipes.tiny import TINY_TEXT_CONFIG, TINY_VISION_CONFIG, tiny_model_config

torch.set_num_threads(1)

VOCAB = 1024
IMAGE_ID = VOCAB - 2
PAD_ID = VOCAB - 1
NUM_IMAGE_TOKENS = (TINY_VISION_CONFIG["image_size"] // TINY_VISION_CONFIG["patch_size"]) ** 2  # 16


def make_model(seed: int = 0, **overrides) -> SQLlavaForConditionalGeneration:
    torch.manual_seed(seed)
    overrides.setdefault("num_prototypes", 8)
    return SQLlavaForConditionalGeneration(tiny_model_config(vocab_size=VOCAB, **overrides)).eval()


def make_inputs(batch: int = 1, seed: int = 0, text_before: int = 3, text_after: int = 4):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        before = torch.randint(3, 900, (text_before,), generator=generator)
        after = torch.randint(3, 900, (text_after,), generator=generator)
        rows.append(torch.cat([torch.tensor([1]), before, torch.full((NUM_IMAGE_TOKENS,), IMAGE_ID), after]))
    input_ids = torch.stack(rows)
    pixel_values = torch.randn(batch, 3, 56, 56, generator=generator)
    return input_ids, pixel_values


# ----------------------------------------------------------------------------------------------------------- config


def test_config_derives_image_seq_length_and_builds_sub_configs():
    config = tiny_model_config(vocab_size=VOCAB)
    assert config.image_seq_length == NUM_IMAGE_TOKENS
    assert tiny_model_config(vocab_size=VOCAB, vision_feature_select_strategy="full").image_seq_length == 17
    assert SQLlavaConfig().image_seq_length == 576  # CLIP ViT-L/14-336
    assert config.vision_config.model_type == "clip_vision_model"
    assert config.text_config.model_type == "llama"
    assert config.num_vision_layers == 2  # layer -2 of 3
    # The attention implementation propagates to both sub-configs (`sub_configs`).
    config._attn_implementation = "eager"
    assert config.vision_config._attn_implementation == "eager"
    assert config.text_config._attn_implementation == "eager"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"projector_type": "mlp3x"}, "'mlp3x'"),
        ({"vision_feature_select_strategy": "cls"}, "'cls'"),
        ({"vision_feature_layer": 7}, "vision_feature_layer`=7"),
        ({"vision_feature_layer": [-2, -1]}, "[-2, -1]"),
        ({"num_prototypes": 0}, "got 0"),
        ({"prototype_iterations": -1}, "got -1"),
        ({"image_token_id": 5000}, "image_token_id`=5000"),
        ({"image_seq_length": 99}, "image_seq_length`=99"),
    ],
)
def test_config_rejects_bad_arguments_naming_the_value(kwargs, message):
    with pytest.raises((ValueError, TypeError)) as error:
        tiny_model_config(vocab_size=VOCAB, **kwargs)
    assert message in str(error.value)


def test_config_round_trips_through_json(tmp_path):
    config = tiny_model_config(vocab_size=VOCAB, projector_type="mlp2x_gelu", num_prototypes=8)
    config.save_pretrained(tmp_path)
    loaded = SQLlavaConfig.from_pretrained(tmp_path)
    for name in ("image_token_id", "pad_token_id", "projector_type", "num_prototypes", "vision_feature_layer"):
        assert getattr(loaded, name) == getattr(config, name)
    assert loaded.vision_config.hidden_size == 32 and loaded.text_config.num_key_value_heads == 2
    assert loaded.image_seq_length == NUM_IMAGE_TOKENS


def test_image_seq_length_is_settable_to_the_value_the_vision_config_gives(tmp_path):
    """LLaVA code sets `config.image_seq_length` (after changing the vision config); a conflicting number is refused."""
    config = tiny_model_config(vocab_size=VOCAB)
    config.image_seq_length = NUM_IMAGE_TOKENS  # agrees: accepted, nothing changes
    config.update({"image_seq_length": NUM_IMAGE_TOKENS})
    assert config.image_seq_length == NUM_IMAGE_TOKENS
    with pytest.raises(ValueError, match=r"`image_seq_length`=20 disagrees .* gives 16 image tokens \(\(56 // 14\)\*\*2\)"):
        config.image_seq_length = 20
    assert config.image_seq_length == NUM_IMAGE_TOKENS
    # The LLaVA idiom: resize the tower, then state the new count (84 px / 14 = 6 x 6 patches).
    config.vision_config.image_size = 84
    config.image_seq_length = 36
    assert config.image_seq_length == 36
    full = tiny_model_config(vocab_size=VOCAB, vision_feature_select_strategy="full")
    with pytest.raises(ValueError, match=r"gives 17 image tokens \(\(56 // 14\)\*\*2 \+ 1 \(CLS\)\)"):
        full.image_seq_length = 16
    # from_pretrained passes its keyword arguments through setattr.
    tiny_model_config(vocab_size=VOCAB).save_pretrained(tmp_path)
    assert SQLlavaConfig.from_pretrained(tmp_path, image_seq_length=NUM_IMAGE_TOKENS).image_seq_length == 16
    with pytest.raises(ValueError, match="`image_seq_length`=17"):
        SQLlavaConfig.from_pretrained(tmp_path, image_seq_length=17)


# ------------------------------------------------------------------------------------------------ prototype extractor


def pooling_window(k: int, length: int, num_prototypes: int) -> range:
    """AdaptiveAvgPool1d's window for output k: [floor(k L / K), ceil((k + 1) L / K))."""
    return range(math.floor(k * length / num_prototypes), math.ceil((k + 1) * length / num_prototypes))


def reference_extractor(x, weights):
    """The issue's equations, token by token and centre by centre, in float64 (no matrix-product shortcuts)."""
    v_w, v_b, f_w, f_b, c_w, c_b, alpha, beta, num_prototypes, iterations = weights
    batch, length, dim = x.shape
    out = torch.empty_like(x)
    for b in range(batch):
        X = x[b]
        V = torch.stack([v_w @ X[l] + v_b for l in range(length)])  # (L, D)
        F = torch.stack([f_w @ X[l] + f_b for l in range(length)])
        for d in range(dim):  # normalise each channel over the tokens
            V[:, d] = V[:, d] / torch.sqrt((V[:, d] ** 2).sum())
        windows = [list(pooling_window(k, length, num_prototypes)) for k in range(num_prototypes)]
        C = torch.stack([X[w].sum(0) / len(w) for w in windows])  # (K, D)
        C_F = torch.stack([F[w].sum(0) / len(w) for w in windows])
        for _ in range(iterations):
            C = torch.stack([c_w @ C[k] + c_b for k in range(num_prototypes)])
            Cn = torch.stack([C[k] / torch.sqrt((C[k] ** 2).sum()) for k in range(num_prototypes)])
            A = torch.zeros(num_prototypes, length, dtype=x.dtype)
            for l in range(length):
                scores = torch.stack([(Cn[k] * V[l]).sum() for k in range(num_prototypes)])
                A[:, l] = torch.exp(scores) / torch.exp(scores).sum()
            C = torch.stack([sum(A[k, l] * F[l] for l in range(length)) for k in range(num_prototypes)])
        S = torch.zeros(num_prototypes, length, dtype=x.dtype)
        for k in range(num_prototypes):
            for l in range(length):
                cos = (C[k] * X[l]).sum() / (torch.sqrt((C[k] ** 2).sum()) * torch.sqrt((X[l] ** 2).sum()))
                S[k, l] = 1.0 / (1.0 + torch.exp(-(beta + alpha * cos)))
        best = [max(range(num_prototypes), key=lambda k: S[k, l].item()) for l in range(length)]
        U = []
        for k in range(num_prototypes):
            members = [l for l in range(length) if best[l] == k]
            total = C_F[k] + sum((S[k, l] * F[l] for l in members), torch.zeros(dim, dtype=x.dtype))
            U.append(total / (len(members) + 1))
        for l in range(length):
            out[b, l] = X[l] + S[best[l], l] * U[best[l]]
    return out


@pytest.mark.parametrize(("length", "num_prototypes"), [(16, 8), (16, 6), (10, 4), (7, 5)])
def test_extractor_matches_float64_reference(length, num_prototypes):
    torch.manual_seed(length * 100 + num_prototypes)
    dim = 12
    extractor = SQLlavaPrototypeExtractor(dim, num_prototypes, num_iterations=2).double()
    with torch.no_grad():  # non-trivial scalars so both enter the reference
        extractor.sim_alpha.fill_(1.7)
        extractor.sim_beta.fill_(-0.3)
    x = torch.randn(2, length, dim, dtype=torch.float64)
    weights = (
        extractor.v.weight.detach(),
        extractor.v.bias.detach(),
        extractor.f.weight.detach(),
        extractor.f.bias.detach(),
        extractor.c.weight.detach(),
        extractor.c.bias.detach(),
        1.7,
        -0.3,
        num_prototypes,
        2,
    )
    expected = reference_extractor(x, weights)
    actual = extractor(x).detach()
    assert actual.shape == x.shape
    relative_error = ((actual - expected).norm() / expected.norm()).item()
    assert relative_error < 1e-10, relative_error
    # The enhancement is not a no-op (the test would otherwise pass for `return x`).
    assert (actual - x).abs().max() > 1e-3


def test_pooling_windows_are_adaptive_avg_pool():
    """The hand-written windows used by the reference are AdaptiveAvgPool1d's (uneven and overlapping at 576 -> 256)."""
    for length, num_prototypes in [(576, 256), (16, 6), (7, 5)]:
        x = torch.randn(1, 3, length, dtype=torch.float64)
        pooled = nn.AdaptiveAvgPool1d(num_prototypes)(x)
        for k in range(num_prototypes):
            window = list(pooling_window(k, length, num_prototypes))
            torch.testing.assert_close(pooled[0, :, k], x[0, :, window].mean(-1), rtol=0, atol=1e-12)
    # 576 -> 256: windows of 3 tokens every 2.25 tokens, so consecutive windows overlap.
    assert sum(len(pooling_window(k, 576, 256)) for k in range(256)) == 768


def test_extractor_never_builds_a_batch_by_prototypes_by_tokens_by_width_tensor():
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor):
                    LargestTensor.largest = max(LargestTensor.largest, tensor.numel())
            return out

    batch, length, num_prototypes, dim = 2, 64, 32, 48
    extractor = SQLlavaPrototypeExtractor(dim, num_prototypes, 2)
    x = torch.randn(batch, length, dim, requires_grad=True)
    with LargestTensor():
        extractor(x).sum().backward()
    # Everything is (B, L, D), (B, K, L), (B, K, D) or (D, D); a (B, K, L, D) product would be 64x larger.
    assert LargestTensor.largest <= max(batch * length * dim, batch * num_prototypes * length, dim * dim)


# ------------------------------------------------------------------------------------------------------ forward path


def test_vision_tower_builds_only_the_layers_it_uses():
    model = make_model()
    tower = model.model.vision_tower
    assert len(tower.encoder.layers) == 2  # 3 CLIP layers, features of layer -2
    names = [name for name, _ in model.named_parameters()]
    assert not any("post_layernorm" in name for name in names)
    assert any(name.startswith("model.vision_tower.encoder.layers.1.") for name in names)
    assert not any(name.startswith("model.vision_tower.encoder.layers.2.") for name in names)
    assert not any(".vision_model." in name for name in names)
    assert any(name.startswith("model.language_model.layers.0.self_attn.q_proj") for name in names)
    assert "model.language_model.embed_tokens.weight" in names and "lm_head.weight" in names


def test_vision_tower_equals_clip_hidden_state_of_the_selected_layer():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    model = make_model()
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION_CONFIG)).eval()
    source = getattr(clip, "vision_model", clip)  # transformers 4.x nests the transformer
    tower = model.model.vision_tower
    tower.embeddings.load_state_dict(source.embeddings.state_dict())
    tower.pre_layrnorm.load_state_dict(source.pre_layrnorm.state_dict())
    for index, layer in enumerate(tower.encoder.layers):
        layer.load_state_dict(source.encoder.layers[index].state_dict())
    pixel_values = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(tower(pixel_values), expected)


@pytest.mark.parametrize("projector_type", ["prototype", "mlp2x_gelu"])
def test_forward_shapes_and_logits_to_keep(projector_type):
    model = make_model(projector_type=projector_type)
    input_ids, pixel_values = make_inputs(batch=2)
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values)
        assert out.logits.shape == (2, input_ids.shape[1], VOCAB)
        assert out.image_hidden_states.shape == (2, NUM_IMAGE_TOKENS, TINY_TEXT_CONFIG["hidden_size"])
        last = model(input_ids=input_ids, pixel_values=pixel_values, logits_to_keep=1).logits
        torch.testing.assert_close(last, out.logits[:, -1:])
        base = SQLlavaModel(model.config)
        base.load_state_dict(model.model.state_dict())
        hidden = base.eval()(input_ids=input_ids, pixel_values=pixel_values).last_hidden_state
        torch.testing.assert_close(model.lm_head(hidden), out.logits)
    projector = model.model.multi_modal_projector
    assert (projector.extractor is not None) == (projector_type == "prototype")


def test_loss_is_mean_shifted_cross_entropy():
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=2)
    labels = input_ids.clone()
    labels[labels == IMAGE_ID] = -100
    out = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels)
    expected = nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, VOCAB).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)


def test_image_features_replace_exactly_the_placeholders():
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=1)
    with torch.no_grad():
        features = model.get_image_features(pixel_values, return_dict=True).pooler_output
        seen = {}
        hook = model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
        )
        model(input_ids=input_ids, pixel_values=pixel_values)
        hook.remove()
        embeds = seen["embeds"][0]
        placeholders = input_ids[0] == IMAGE_ID
        torch.testing.assert_close(embeds[placeholders], features[0])
        torch.testing.assert_close(embeds[~placeholders], model.get_input_embeddings()(input_ids[0][~placeholders]))


def clip_with_tower_weights(model, attn_implementation: str = "sdpa"):
    """A transformers `CLIPVisionModel` holding the SQ-LLaVA tower's weights (its extra layer stays random)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION_CONFIG, attn_implementation=attn_implementation)).eval()
    source = getattr(clip, "vision_model", clip)  # transformers 4.x nests the transformer
    tower = model.model.vision_tower
    source.embeddings.load_state_dict(tower.embeddings.state_dict())
    source.pre_layrnorm.load_state_dict(tower.pre_layrnorm.state_dict())
    for index, layer in enumerate(tower.encoder.layers):
        source.encoder.layers[index].load_state_dict(layer.state_dict())
    return clip


def test_get_image_features_follows_llava_conventions():
    """5.x LLaVA: a BaseModelOutputWithPooling with the projected features per image in `pooler_output` (what vLLM's
    Transformers backend reads with `return_dict=True`); 4.57 LLaVA: the list of per-image features."""
    import transformers
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = make_model()
    _, pixel_values = make_inputs(batch=2)
    clip = clip_with_tower_weights(model)
    with torch.no_grad():
        expected_tower = clip(pixel_values, output_hidden_states=True).hidden_states[2]  # layer -2 of 3, with CLS
        expected = model.model.multi_modal_projector(expected_tower[:, 1:])
        for owner in (model, model.model):  # the generation class delegates to the base model
            out = owner.get_image_features(pixel_values, return_dict=True)
            assert isinstance(out, BaseModelOutputWithPooling)
            assert isinstance(out.pooler_output, list) and len(out.pooler_output) == 2
            assert out.pooler_output[0].shape == (NUM_IMAGE_TOKENS, TINY_TEXT_CONFIG["hidden_size"])
            torch.testing.assert_close(torch.stack(out.pooler_output), expected)
            torch.testing.assert_close(out.last_hidden_state, expected_tower)
            assert out.hidden_states is None and out.attentions is None
        default = model.get_image_features(pixel_values)
        if int(transformers.__version__.split(".")[0]) >= 5:
            assert isinstance(default, BaseModelOutputWithPooling)
        else:
            assert isinstance(default, list) and len(default) == 2
            torch.testing.assert_close(torch.stack(default), expected)
        as_tuple = model.get_image_features(pixel_values, return_dict=False)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], expected_tower)
        # The configured layer, spelled either way, is accepted; "full" keeps the CLS row.
        for layer in (-2, 2):
            same = model.get_image_features(pixel_values, vision_feature_layer=layer, return_dict=True)
            torch.testing.assert_close(torch.stack(same.pooler_output), expected)
        full = model.get_image_features(pixel_values, vision_feature_select_strategy="full", return_dict=True)
        torch.testing.assert_close(torch.stack(full.pooler_output), model.model.multi_modal_projector(expected_tower))
    with pytest.raises(ValueError, match="`vision_feature_layer`=-1 differs from config.vision_feature_layer=-2"):
        model.get_image_features(pixel_values, vision_feature_layer=-1)
    with pytest.raises(ValueError, match="'cls'"):
        model.get_image_features(pixel_values, vision_feature_select_strategy="cls")
    with pytest.raises(TypeError, match=r"\['image_sizes'\]"):
        model.get_image_features(pixel_values, image_sizes=torch.tensor([[56, 56], [56, 56]]))


def test_get_image_features_hidden_states_and_attentions_equal_clips():
    model = make_model(attn_implementation="eager")
    _, pixel_values = make_inputs(batch=2)
    clip = clip_with_tower_weights(model, attn_implementation="eager")
    with torch.no_grad():
        expected = clip(pixel_values, output_hidden_states=True, output_attentions=True)
        out = model.get_image_features(pixel_values, output_hidden_states=True, output_attentions=True, return_dict=True)
    # The tower ends at layer -2: embeddings + 2 built layers, each equal to CLIP's.
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    for actual, reference in zip(out.hidden_states, expected.hidden_states[:3]):
        torch.testing.assert_close(actual, reference)
    for actual, reference in zip(out.attentions, expected.attentions[:2]):
        assert actual.shape == (2, TINY_VISION_CONFIG["num_attention_heads"], NUM_IMAGE_TOKENS + 1, NUM_IMAGE_TOKENS + 1)
        torch.testing.assert_close(actual, reference)
        torch.testing.assert_close(actual.sum(-1), torch.ones(actual.shape[:-1]))
    sdpa = make_model()
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        sdpa.get_image_features(pixel_values, output_attentions=True)


def test_outputs_carry_image_outputs_and_image_hidden_states():
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=2)
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, output_hidden_states=True)
        features = model.get_image_features(pixel_values, return_dict=True)
    torch.testing.assert_close(torch.stack(out.image_outputs.pooler_output), out.image_hidden_states)
    torch.testing.assert_close(out.image_hidden_states, torch.stack(features.pooler_output))
    torch.testing.assert_close(out.image_outputs.last_hidden_state, features.last_hidden_state)
    assert len(out.image_outputs.hidden_states) == 3  # asked for hidden states: the tower's come along, as in LLaVA
    assert len(out.hidden_states) == TINY_TEXT_CONFIG["num_hidden_layers"] + 1
    assert model(input_ids=input_ids[:, :1]).image_outputs is None


def test_sdpa_matches_eager():
    model = make_model()
    assert model.config.vision_config._attn_implementation == "sdpa"
    eager = SQLlavaForConditionalGeneration._from_config(
        copy.deepcopy(model.config), attn_implementation="eager"
    ).eval()
    eager.load_state_dict(model.state_dict())
    assert eager.config.vision_config._attn_implementation == "eager"
    input_ids, pixel_values = make_inputs(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=input_ids, pixel_values=pixel_values).logits,
            eager(input_ids=input_ids, pixel_values=pixel_values).logits,
            rtol=1e-4,
            atol=1e-4,
        )


# ---------------------------------------------------------------------------------------------------------- errors


def test_placeholder_count_mismatch_names_both_numbers():
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=1)
    with pytest.raises(ValueError, match="tokens: 15, features: 16"):
        model(input_ids=input_ids[:, :-5], pixel_values=pixel_values)  # one placeholder short
    two_images = torch.cat([pixel_values, pixel_values])
    with pytest.raises(ValueError, match="tokens: 16, features: 32"):
        model(input_ids=input_ids, pixel_values=two_images)
    with pytest.raises(ValueError, match="tokens: 16, features: 0"):
        model(input_ids=input_ids)


def test_wrong_pixel_size_names_the_expected_size():
    model = make_model()
    input_ids, _ = make_inputs(batch=1)
    with pytest.raises(ValueError, match=r"expected \(num_images, 3, 56, 56\)"):
        model(input_ids=input_ids, pixel_values=torch.randn(1, 3, 64, 64))


# ------------------------------------------------------------------------------------------------------- generation


def test_generation_with_and_without_cache_agree_and_encode_images_once():
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=1)
    calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    common = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": PAD_ID, "eos_token_id": None}
    cached = model.generate(
        input_ids=input_ids, pixel_values=pixel_values, attention_mask=torch.ones_like(input_ids), **common
    )
    assert len(calls) == 1  # pixel_values only at prefill
    uncached = model.generate(
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=torch.ones_like(input_ids),
        use_cache=False,
        **common,
    )
    hook.remove()
    assert cached.shape[1] == input_ids.shape[1] + 6
    assert torch.equal(cached, uncached)


def test_left_padded_batch_generates_the_same_tokens_as_single_prompts():
    model = make_model()
    prompts = [
        make_inputs(1, seed=1, text_before=2, text_after=2),
        make_inputs(1, seed=2, text_before=5, text_after=6),
    ]
    width = max(ids.shape[1] for ids, _ in prompts)
    input_ids = torch.full((2, width), PAD_ID)
    attention_mask = torch.zeros((2, width), dtype=torch.long)
    for row, (ids, _) in enumerate(prompts):
        input_ids[row, width - ids.shape[1] :] = ids[0]
        attention_mask[row, width - ids.shape[1] :] = 1
    pixel_values = torch.cat([pixels for _, pixels in prompts])
    common = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": PAD_ID, "eos_token_id": None}
    batched = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **common)
    for row, (ids, pixels) in enumerate(prompts):
        single = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, **common)
        assert torch.equal(batched[row, width:], single[0, ids.shape[1] :])


def test_static_cache_generation_matches_dynamic():
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=1)
    common = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": PAD_ID, "eos_token_id": None}
    dynamic = model.generate(input_ids=input_ids, pixel_values=pixel_values, **common)
    static = model.generate(
        input_ids=input_ids, pixel_values=pixel_values, cache_implementation="static", disable_compile=True, **common
    )
    assert torch.equal(dynamic, static)


# ------------------------------------------------------------------------------------------------ weights, save/load


def test_random_init_is_real_and_save_load_round_trip_is_exact(tmp_path):
    model = make_model(seed=3)
    extractor = model.model.multi_modal_projector.extractor
    assert extractor.sim_alpha.item() == 1.0 and extractor.sim_beta.item() == 0.0
    for name, param in model.model.multi_modal_projector.named_parameters():
        if param.ndim == 2:
            assert 0.005 < param.std().item() < 0.1, name  # initialised, not zeros or torch.empty garbage
    assert model.model.vision_tower.embeddings.class_embedding.abs().sum() > 0

    with torch.no_grad():  # values that no initialiser would produce, to catch re-initialisation on load
        extractor.sim_alpha.fill_(2.5)
        extractor.sim_beta.fill_(-0.75)
    model.save_pretrained(tmp_path)
    loaded = SQLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(expected, actual), name
    input_ids, pixel_values = make_inputs(batch=2)
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=input_ids, pixel_values=pixel_values).logits,
            loaded(input_ids=input_ids, pixel_values=pixel_values).logits,
        )


def test_resize_token_embeddings_pads_to_multiple_of_64():
    model = make_model()
    model.resize_token_embeddings(VOCAB + 3, pad_to_multiple_of=64)
    assert model.get_input_embeddings().weight.shape[0] == VOCAB + 64
    assert model.lm_head.weight.shape[0] == VOCAB + 64
    assert model.config.text_config.vocab_size == VOCAB + 64
    input_ids, pixel_values = make_inputs(batch=1)
    with torch.no_grad():
        assert model(input_ids=input_ids, pixel_values=pixel_values).logits.shape[-1] == VOCAB + 64


def test_from_vision_text_pretrained_copies_both_towers(tmp_path, llama_tokenizer):
    from transformers import CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    clip = CLIPModel(
        CLIPConfig(
            vision_config=dict(TINY_VISION_CONFIG),
            text_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "projection_dim": 32,
            },
            projection_dim=32,
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32000, **TINY_TEXT_CONFIG)).eval()
    llama.save_pretrained(tmp_path / "llama")

    model = SQLlavaForConditionalGeneration.from_vision_text_pretrained(
        str(tmp_path / "clip"), str(tmp_path / "llama"), tokenizer=llama_tokenizer, num_prototypes=8
    ).eval()
    assert (model.config.image_token_id, model.config.pad_token_id) == (32000, 32001)
    assert llama_tokenizer.convert_tokens_to_ids("<image>") == 32000 and llama_tokenizer.pad_token_id == 32001
    assert model.config.text_config.vocab_size == 32064 and model.lm_head.weight.shape[0] == 32064
    assert len(model.model.vision_tower.encoder.layers) == 2

    text_ids = torch.tensor([[1, 450, 4799, 338, 263]])
    pixel_values = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=text_ids).logits[..., :32000], llama(input_ids=text_ids).logits)
        expected = clip.vision_model(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(model.model.vision_tower(pixel_values), expected)


# ---------------------------------------------------------------------------------------------------------- training


def grads_of(model, input_ids, pixel_values, labels):
    model.zero_grad()
    model(input_ids=input_ids, pixel_values=pixel_values, labels=labels).loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def test_gradient_checkpointing_non_reentrant_gives_the_same_gradients():
    model = make_model().train()
    input_ids, pixel_values = make_inputs(batch=2)
    labels = torch.where(input_ids == IMAGE_ID, -100, input_ids)
    reference = grads_of(model, input_ids, pixel_values, labels)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.vision_tower.encoder.layers)
    assert all(layer.gradient_checkpointing for layer in model.model.language_model.layers)
    checkpointed = grads_of(model, input_ids, pixel_values, labels)
    assert reference.keys() == checkpointed.keys()
    assert len(reference) == sum(1 for p in model.parameters() if p.requires_grad)
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("checkpointing", [None, "reentrant"])
def test_lora_on_both_towers_gives_every_trainable_parameter_a_gradient(checkpointing):
    peft = pytest.importorskip("peft")
    model = make_model().train()
    target = (
        r"model\.vision_tower\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
        r"|model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    )
    # LoRA's default init (B = 0) gives A a zero gradient at step one; random init makes the check meaningful.
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=target, init_lora_weights=False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
    peft_model = peft.get_peft_model(model, lora)
    for param in model.model.multi_modal_projector.parameters():
        param.requires_grad_(True)
    trainable = {name: param for name, param in peft_model.named_parameters() if param.requires_grad}
    assert any("vision_tower" in name and "lora_A" in name for name in trainable)
    assert any("vision_tower.encoder.layers.1." in name for name in trainable)  # the last built ViT layer
    assert any("language_model" in name and "lora_B" in name for name in trainable)
    input_ids, pixel_values = make_inputs(batch=2)
    labels = torch.where(input_ids == IMAGE_ID, -100, input_ids)
    peft_model(input_ids=input_ids, pixel_values=pixel_values, labels=labels).loss.backward()
    without_gradient = [
        name for name, param in trainable.items() if param.grad is None or not param.grad.abs().sum() > 0
    ]
    assert without_gradient == []


def test_enable_input_require_grads_hooks_both_towers():
    model = make_model()
    for param in model.parameters():
        param.requires_grad_(False)
    outputs = {}
    model.model.vision_tower.embeddings.register_forward_hook(lambda m, i, o: outputs.update(vision=o))
    model.get_input_embeddings().register_forward_hook(lambda m, i, o: outputs.update(text=o))
    model.enable_input_require_grads()
    input_ids, pixel_values = make_inputs(batch=1)
    model(input_ids=input_ids, pixel_values=pixel_values)
    assert outputs["vision"].requires_grad and outputs["text"].requires_grad
    model.disable_input_require_grads()
    model(input_ids=input_ids, pixel_values=pixel_values)
    assert not outputs["vision"].requires_grad and not outputs["text"].requires_grad
