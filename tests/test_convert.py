"""Conversion of the released SQ-LLaVA checkpoints (hub_upload/convert_original.py).

The tests write tiny checkpoints in exactly the released layout (a LLaVA-format Llama with a stray projector and
saved rotary buffers, a CLIP tower with 4.x `vision_model.*` or 5.x keys, the LLM LoRA as `adapter_model.bin`, the
cluster projector as `non_lora_trainables.bin`, a `Vit-lora/` adapter, a LLaVA `config.json` and a Vicuna-like
tokenizer without `<image>`/`<pad>`), convert them and compare the converted model with an independent float64
forward written here from the released structure: CLIP hidden state -2 (CLS dropped) -> the original cluster
projector's equations (written with the original B x K x L x D broadcasting, not the model's matrix form) -> MLP ->
Llama with the image rows spliced in at the single placeholder. Towers are transformers' CLIPVisionModel and
LlamaForCausalLM in float64 with the LoRA merged by hand (`W + alpha/r B A`, `alpha/sqrt(r)` for rsLoRA).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch.nn import functional

from hub_upload.convert_original import (
    LLM_LORA_VIT_COPY_PREFIX,
    ConversionError,
    build_model,
    build_sqllava_config,
    convert_original_checkpoint,
    convert_projector_state_dict,
    convert_state_dicts,
    lora_scaling,
)
from hub_upload.convert_original import main as convert_main

torch.set_num_threads(1)

VISION = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "image_size": 56,
    "patch_size": 14, "projection_dim": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}  # fmt: skip
TEXT = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "initializer_range": 0.1,
}  # fmt: skip
NUM_PROTOTYPES, ITERATIONS = 6, 2  # 16 patches -> 6 prototypes: uneven, overlapping pooling windows as 576 -> 256
LLM_LORA = {"r": 4, "lora_alpha": 8}  # scaling 2
VIT_LORA = {"r": 2, "lora_alpha": 3, "use_rslora": True}  # scaling 3 / sqrt(2)
LLM_TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj"]  # fmt: skip
VIT_TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]


# ------------------------------------------------------------------------------------------ released-layout fixture


def vicuna_like_tokenizer():
    """The tiny Llama-style tokenizer without `<image>` and `<pad>` (Vicuna has neither)."""
    from tokenizers import Tokenizer
    from transformers import LlamaTokenizerFast

    from recipes.tiny import build_tiny_tokenizer

    payload = json.loads(build_tiny_tokenizer().backend_tokenizer.to_str())
    payload["added_tokens"] = [t for t in payload["added_tokens"] if t["content"] not in ("<image>", "<pad>")]
    tokenizer = LlamaTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(payload)), unk_token="<unk>", bos_token="<s>",
        eos_token="</s>", add_bos_token=True, add_eos_token=False, legacy=True, clean_up_tokenization_spaces=False,
    )  # fmt: skip
    assert "<image>" not in tokenizer.get_vocab() and tokenizer.pad_token is None
    return tokenizer


def random_lora(generator, out_features: int, in_features: int, r: int, std: float = 0.3):
    lora_a = torch.randn(r, in_features, generator=generator) * std
    return lora_a, torch.randn(out_features, r, generator=generator) * std


def write_released_checkpoint(
    root: Path,
    *,
    vision_key_style: str = "4.x",
    weights_format: str = "bin",
    tokenizer=None,
    vision: dict = VISION,
    text: dict = TEXT,
    lora_std: float = 0.3,
) -> dict:
    """Write the four released pieces under `root`; returns their raw tensors for the reference.

    The default scales (LoRA entries of std 0.3, Llama initializer range 0.1) make every piece move the logits, for
    the float32 comparison with the reference; `lora_std`, `text` and `vision` give a better-conditioned checkpoint,
    like a trained one, for the half-precision checks.
    """
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    generator = torch.Generator().manual_seed(0)
    tokenizer = vicuna_like_tokenizer() if tokenizer is None else tokenizer
    vocab = len(tokenizer)
    base, model_path, clip_dir = root / "base", root / "sqllava-lora", root / "clip"
    vit_dir = model_path / "Vit-lora"
    for folder in (base, model_path, clip_dir, vit_dir):
        folder.mkdir(parents=True)

    # --model-base: LLaVA-format Llama (`model.*`, `lm_head.*`), with a stray LLaVA projector and rotary buffers.
    torch.manual_seed(1)
    llama_config = LlamaConfig(**text, vocab_size=vocab, bos_token_id=1, eos_token_id=2)
    llm_state = {k: v.clone() for k, v in LlamaForCausalLM(llama_config).state_dict().items()}
    extra = {
        "model.mm_projector.0.weight": torch.randn(64, 32), "model.mm_projector.0.bias": torch.randn(64),
        "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8),
    }  # fmt: skip
    llm_file = {**llm_state, **extra}
    if weights_format == "bin":
        torch.save(llm_file, base / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in llm_file.items()}, str(base / "model.safetensors"))
    tokenizer.save_pretrained(base)

    # --vision-tower: CLIP with 4.x keys (`vision_model.*`) or as this transformers saves it.
    torch.manual_seed(2)
    clip = CLIPVisionModel(CLIPVisionConfig(**vision))
    clip_state = {k: v.clone() for k, v in clip.state_dict().items()}
    clip_state = {k.removeprefix("vision_model."): v for k, v in clip_state.items()}
    if vision_key_style == "4.x":
        clip.config.save_pretrained(clip_dir)
        save_file(
            {f"vision_model.{k}": v.contiguous() for k, v in clip_state.items()}, str(clip_dir / "model.safetensors")
        )
    else:
        clip.save_pretrained(clip_dir)

    # --model-path: LLaVA config.json, LLM LoRA (adapter_model.bin), projector (non_lora_trainables.bin).
    llava_config = llama_config.to_dict()
    llava_config.update(
        architectures=["LlavaLlamaForCausalLM"], model_type="llava", mm_projector_type="cluster",
        mm_vision_tower=str(clip_dir), mm_hidden_size=vision["hidden_size"], mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", image_aspect_ratio="pad", mm_use_im_start_end=False,
        mm_use_im_patch_token=False, tune_mm_mlp_adapter=False,
    )  # fmt: skip
    (model_path / "config.json").write_text(json.dumps(llava_config))
    llm_lora = {}
    for layer in range(text["num_hidden_layers"]):
        for target in LLM_TARGETS:
            weight = llm_state[f"model.layers.{layer}.{target}.weight"]
            lora_a, lora_b = random_lora(generator, *weight.shape, LLM_LORA["r"], lora_std)
            llm_lora[f"base_model.model.model.layers.{layer}.{target}.lora_A.weight"] = lora_a
            llm_lora[f"base_model.model.model.layers.{layer}.{target}.lora_B.weight"] = lora_b
    torch.save(llm_lora, model_path / "adapter_model.bin")
    adapter_config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none", "lora_dropout": 0.05,
                      "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      **LLM_LORA}  # fmt: skip
    (model_path / "adapter_config.json").write_text(json.dumps(adapter_config))

    d, h = vision["hidden_size"], text["hidden_size"]
    prefix = "base_model.model.model.mm_projector."
    projector = {
        "sim_alpha": torch.full((1, 1, 1), 1.7), "sim_beta": torch.full((1, 1, 1), -0.4),
        "c.weight": torch.randn(d, d, generator=generator) / math.sqrt(d), "c.bias": torch.randn(d, generator=generator),
        "v.weight": torch.randn(d, d, generator=generator) / math.sqrt(d), "v.bias": torch.randn(d, generator=generator),
        "f.weight": torch.randn(d, d, generator=generator) / math.sqrt(d), "f.bias": torch.randn(d, generator=generator),
        "ln_1.weight": torch.randn(d, generator=generator), "ln_1.bias": torch.randn(d, generator=generator),
        "mlp.0.weight": torch.randn(h, d, generator=generator) / math.sqrt(d), "mlp.0.bias": torch.randn(h, generator=generator),
        "mlp.2.weight": torch.randn(h, h, generator=generator) / math.sqrt(h), "mlp.2.bias": torch.randn(h, generator=generator),
    }  # fmt: skip
    torch.save({prefix + k: v for k, v in projector.items()}, model_path / "non_lora_trainables.bin")

    # Vit-lora/: a PEFT adapter over the original CLIPVisionTower, every layer (the last one is unused at -2).
    vit_lora = {}
    for layer in range(vision["num_hidden_layers"]):
        for target in VIT_TARGETS:
            weight = clip_state[f"encoder.layers.{layer}.{target}.weight"]
            lora_a, lora_b = random_lora(generator, *weight.shape, VIT_LORA["r"], lora_std)
            key = f"base_model.model.vision_tower.vision_model.encoder.layers.{layer}.{target}"
            vit_lora[f"{key}.lora_A.weight"], vit_lora[f"{key}.lora_B.weight"] = lora_a, lora_b
    if weights_format == "bin":
        torch.save(vit_lora, vit_dir / "adapter_model.bin")
    else:
        save_file(vit_lora, str(vit_dir / "adapter_model.safetensors"))
    vit_config = {"peft_type": "LORA", "bias": "none", "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj",
                                                                           "fc1", "fc2"], **VIT_LORA}  # fmt: skip
    (vit_dir / "adapter_config.json").write_text(json.dumps(vit_config))
    return {
        "root": root, "base": base, "model_path": model_path, "clip_dir": clip_dir, "vit_dir": vit_dir,
        "tokenizer": tokenizer, "llama_config": llama_config, "llm_state": llm_state, "clip_state": clip_state,
        "llm_lora": llm_lora, "vit_lora": vit_lora, "projector": projector, "llava_config": llava_config,
    }  # fmt: skip


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return write_released_checkpoint(tmp_path_factory.mktemp("released"))


# ------------------------------------------------------------------------------------- independent float64 reference


def merged_lora_state(state: dict, lora: dict, prefix: str, scaling: float) -> dict:
    merged = {k: v.double().clone() for k, v in state.items()}
    for key, lora_a in lora.items():
        if ".lora_A." not in key:
            continue
        module = key[len(prefix) :].replace(".lora_A.weight", "")
        lora_b = lora[key.replace("lora_A", "lora_B")]
        merged[f"{module}.weight"] += scaling * (lora_b.double() @ lora_a.double())
    return merged


def reference_cluster_projector(x: torch.Tensor, p: dict) -> torch.Tensor:
    """The released `Clustering.forward` (x: B x L x D), broadcasting as the original does, in float64."""

    def linear(name, t):
        return t @ p[f"{name}.weight"].double().T + p[f"{name}.bias"].double()

    value = linear("v", x).permute(0, 2, 1)  # B x D x L
    feature = linear("f", x)  # B x L x D
    centers = functional.adaptive_avg_pool1d(x.permute(0, 2, 1), NUM_PROTOTYPES).permute(0, 2, 1)  # B x K x D
    centers_feature = functional.adaptive_avg_pool1d(feature.permute(0, 2, 1), NUM_PROTOTYPES).permute(0, 2, 1)
    for _ in range(ITERATIONS):
        centers = linear("c", centers)
        # F.normalize(value, dim=-1) on B x D x L: each channel normalised over the tokens.
        sim = torch.softmax(functional.normalize(centers, dim=-1) @ functional.normalize(value, dim=-1), dim=-2)
        centers = sim @ feature
    cos = functional.normalize(centers, dim=-1) @ functional.normalize(x, dim=-1).transpose(-2, -1)
    similarity = torch.sigmoid(p["sim_beta"].double() + p["sim_alpha"].double() * cos)  # B x K x L
    _, max_idx = similarity.max(dim=1, keepdim=True)
    mask = torch.zeros_like(similarity).scatter_(1, max_idx, 1.0)
    similarity = similarity * mask
    out = ((feature.unsqueeze(1) * similarity.unsqueeze(-1)).sum(dim=2) + centers_feature) / (
        mask.sum(dim=-1, keepdim=True) + 1.0
    )
    out = x + (out.unsqueeze(2) * similarity.unsqueeze(-1)).sum(dim=1)
    hidden = linear("mlp.0", out)
    return linear("mlp.2", hidden * torch.sigmoid(1.702 * hidden))


def reference_vision_features(released: dict, pixel_values: torch.Tensor, *, with_vit_lora: bool = True):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    clip = CLIPVisionModel(CLIPVisionConfig(**VISION)).double().eval()
    state = released["clip_state"]
    if with_vit_lora:
        scaling = VIT_LORA["lora_alpha"] / math.sqrt(VIT_LORA["r"])  # rsLoRA
        state = merged_lora_state(state, released["vit_lora"], "base_model.model.vision_tower.vision_model.", scaling)
    target = clip.vision_model if hasattr(clip, "vision_model") else clip
    target.load_state_dict({k: v.double() for k, v in state.items()}, strict=True)
    with torch.no_grad():
        hidden = clip(pixel_values=pixel_values.double(), output_hidden_states=True).hidden_states[-2]
    return hidden[:, 1:]  # mm_vision_select_feature "patch": CLS dropped


def reference_logits(released: dict, before: torch.Tensor, after: torch.Tensor, pixel_values: torch.Tensor):
    """Original LLaVA forward: [BOS+before] embeddings, the projected image rows, [after] embeddings -> Llama."""
    from transformers import LlamaForCausalLM

    llama = LlamaForCausalLM(released["llama_config"]).double().eval()
    scaling = LLM_LORA["lora_alpha"] / LLM_LORA["r"]
    llama.load_state_dict(merged_lora_state(released["llm_state"], released["llm_lora"], "base_model.model.", scaling))
    image_rows = reference_cluster_projector(reference_vision_features(released, pixel_values), released["projector"])
    embed = llama.get_input_embeddings()
    with torch.no_grad():
        embeds = torch.cat([embed(before), image_rows[0], embed(after)]).unsqueeze(0)
        return llama(inputs_embeds=embeds).logits[0]


# ---------------------------------------------------------------------------------------------------------- tests


def test_projector_keys_map_with_and_without_prefix_and_load_strictly(released):
    """convert_projector_state_dict gives a strict-loadable state dict; ln_1 is dropped, sim_* become scalars."""
    from modeling_sqllava import SQLlavaMultiModalProjector
    from recipes.tiny import tiny_model_config

    config = tiny_model_config(num_prototypes=NUM_PROTOTYPES)
    prefixed = {f"base_model.model.model.mm_projector.{k}": v for k, v in released["projector"].items()}
    for original in (released["projector"], prefixed):
        dropped = {}
        state = convert_projector_state_dict(original, dropped_log=dropped)
        SQLlavaMultiModalProjector(config).load_state_dict(state, strict=True)
        assert state["extractor.sim_alpha"].shape == () and state["extractor.sim_alpha"].item() == pytest.approx(1.7)
        assert torch.equal(state["linear_2.weight"], released["projector"]["mlp.2.weight"])
        assert set(dropped) == {"projector:ln_1.weight", "projector:ln_1.bias"}


def test_unknown_and_missing_projector_keys_fail_with_their_names(released):
    with pytest.raises(ConversionError, match="mystery.weight"):
        convert_projector_state_dict({**released["projector"], "mystery.weight": torch.zeros(1)})
    incomplete = {k: v for k, v in released["projector"].items() if k != "mlp.2.bias"}
    with pytest.raises(ConversionError, match="linear_2.bias"):
        convert_projector_state_dict(incomplete)
    with pytest.raises(ConversionError, match="sim_beta"):
        convert_projector_state_dict({**released["projector"], "sim_beta": torch.zeros(2)})


def _config_for(released):
    tokenizer_length = len(released["tokenizer"]) + 2
    return build_sqllava_config(
        released["llava_config"], VISION, vocab_size=math.ceil(tokenizer_length / 64) * 64,
        image_token_id=tokenizer_length - 2, pad_token_id=tokenizer_length - 1, num_prototypes=NUM_PROTOTYPES,
    )  # fmt: skip


def _pieces(released):
    return {
        "llm_state": released["llm_state"],
        "vision_state": released["clip_state"],
        "projector_state": released["projector"],
        "llm_lora": (released["llm_lora"], LLM_LORA),
        "vit_lora": (released["vit_lora"], VIT_LORA),
    }


def test_unknown_keys_in_any_piece_fail_with_their_names(released):
    config = _config_for(released)
    pieces = _pieces(released)
    bad_llm = dict(pieces, llm_state={**released["llm_state"], "model.adapter_gate.weight": torch.zeros(1)})
    with pytest.raises(ConversionError, match="model.adapter_gate.weight"):
        convert_state_dicts(config, **bad_llm)
    bad_vision = dict(
        pieces, vision_state={**released["clip_state"], "vision_model.extra_norm.weight": torch.zeros(1)}
    )
    with pytest.raises(ConversionError, match="vision_model.extra_norm.weight"):
        convert_state_dicts(config, **bad_vision)
    dora = {
        **released["vit_lora"],
        "base_model.model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.lora_magnitude_vector": torch.zeros(1),
    }
    with pytest.raises(ConversionError, match="lora_magnitude_vector"):
        convert_state_dicts(config, **dict(pieces, vit_lora=(dora, VIT_LORA)))
    half = {k: v for k, v in released["llm_lora"].items() if "layers.1.mlp.up_proj.lora_B" not in k}
    with pytest.raises(ConversionError, match=r"model.layers.1.mlp.up_proj"):
        convert_state_dicts(config, **dict(pieces, llm_lora=(half, LLM_LORA)))


def test_missing_required_keys_fail_with_their_names(released):
    config = _config_for(released)
    llm_state = {k: v for k, v in released["llm_state"].items() if k != "model.norm.weight"}
    state, _ = convert_state_dicts(config, **dict(_pieces(released), llm_state=llm_state))
    with pytest.raises(ConversionError, match="model.language_model.norm.weight"):
        build_model(config, state)
    clip_state = {k: v for k, v in released["clip_state"].items() if not k.startswith("encoder.layers.1.")}
    # A LoRA over a weight the checkpoints lack is named as such ...
    with pytest.raises(ConversionError, match=r"model.vision_tower.encoder.layers.1.mlp.fc1.weight"):
        convert_state_dicts(config, **dict(_pieces(released), vision_state=clip_state))
    # ... and without the LoRA, the strict build lists the missing tower weights.
    state, _ = convert_state_dicts(config, **dict(_pieces(released), vision_state=clip_state, vit_lora=None))
    with pytest.raises(ConversionError, match=r"model.vision_tower.encoder.layers.1.layer_norm1.bias"):
        build_model(config, state)


def test_lora_scaling_follows_each_adapter_config():
    assert lora_scaling({"r": 4, "lora_alpha": 8}, "model.layers.0.self_attn.q_proj", 4) == 2.0
    assert lora_scaling({"r": 4, "lora_alpha": 8, "use_rslora": True}, "x.q_proj", 4) == pytest.approx(4.0)
    patterns = {"r": 4, "lora_alpha": 8, "rank_pattern": {"fc1": 2}, "alpha_pattern": {"fc1": 1}}
    assert lora_scaling(patterns, "vision_model.encoder.layers.0.mlp.fc1", 2) == 0.5
    with pytest.raises(ConversionError, match="rank 3"):
        lora_scaling({"r": 4, "lora_alpha": 8}, "x.q_proj", 3)


@pytest.mark.parametrize(("vision_key_style", "weights_format"), [("4.x", "bin"), ("5.x", "safetensors")])
def test_converted_model_matches_float64_reference_of_the_released_structure(
    tmp_path, vision_key_style, weights_format
):
    """End to end: released files -> export folder (verified in a fresh process) -> logits equal the reference."""
    from huggingface_hub import ModelCard
    from PIL import Image

    from modeling_sqllava import SQLlavaForConditionalGeneration
    from processing import SQLlavaProcessor

    released = write_released_checkpoint(tmp_path / "released", vision_key_style=vision_key_style,
                                         weights_format=weights_format)  # fmt: skip
    output = tmp_path / "converted"
    report = convert_original_checkpoint(
        model_base=str(released["base"]), model_path=str(released["model_path"]), output_dir=str(output),
        dtype="float32", num_prototypes=NUM_PROTOTYPES, verify=vision_key_style == "4.x",
    )  # fmt: skip
    assert report["merged_lora"] == {"llm": 2 * 7, "vit": 2 * 6}  # the unused third CLIP layer's LoRA is dropped
    dropped = report["dropped"]
    assert any("vit-lora:" in k and "layers.2." in k for k in dropped)
    assert any(k.startswith("model-base:model.mm_projector.") for k in dropped)
    assert any("post_layernorm" in k for k in dropped) and any("ln_1" in k for k in dropped)
    if vision_key_style == "4.x":
        assert report["verified"] and report["max_relative_error"] < report["tolerance"]
    assert not [f for f in report["files"] if f.endswith((".bin", ".pt", ".pth", ".pkl"))]

    tokenizer = released["tokenizer"]
    vocab = len(tokenizer)
    card = ModelCard.load(output / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and "sqllava" in card.data.tags
    processor = SQLlavaProcessor.from_pretrained(output)
    assert processor.tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [vocab, vocab + 1]
    encoded = processor(text="<image>\nWhat is it?", images=Image.new("RGB", (40, 30)), return_tensors="pt")
    assert int((encoded["input_ids"] == vocab).sum()) == (VISION["image_size"] // VISION["patch_size"]) ** 2
    config = json.loads((output / "config.json").read_text())
    assert config["image_token_id"] == vocab and config["pad_token_id"] == vocab + 1
    assert config["text_config"]["vocab_size"] == math.ceil((vocab + 2) / 64) * 64

    model = SQLlavaForConditionalGeneration.from_pretrained(output, dtype=torch.float64).eval()
    generator = torch.Generator().manual_seed(3)
    before = torch.cat([torch.tensor([1]), torch.randint(3, vocab, (5,), generator=generator)])
    after = torch.randint(3, vocab, (7,), generator=generator)
    pixel_values = torch.randn(1, 3, VISION["image_size"], VISION["image_size"], generator=generator)
    num_image_tokens = (VISION["image_size"] // VISION["patch_size"]) ** 2
    input_ids = torch.cat([before, torch.full((num_image_tokens,), config["image_token_id"]), after]).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values.double()).logits[0]
    expected = reference_logits(released, before, after, pixel_values)
    error = (logits[:, :vocab] - expected).abs().max() / expected.abs().max()
    assert error < 1e-5, f"converted vs float64 reference: relative error {error:.2e}"
    # New rows (<image>, <pad>, padding) are the mean of the old ones: their logit is the mean logit, never the top.
    mean_logit = expected.mean(-1, keepdim=True).expand(-1, logits.shape[1] - vocab)
    torch.testing.assert_close(logits[:, vocab:], mean_logit, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert (logits[:, vocab:].max(-1).values < logits[:, :vocab].max(-1).values).all()


def test_vit_lora_really_changes_the_vision_features(tmp_path, released):
    """The merged ViT-LoRA is in the converted tower: features differ from the plain CLIP's and match the merge."""
    from modeling_sqllava import SQLlavaForConditionalGeneration

    for name in ("with", "without"):
        model_path = released["model_path"]
        if name == "without":  # a released folder without Vit-lora/
            model_path = tmp_path / "no-vit"
            model_path.mkdir()
            for file in ("config.json", "adapter_config.json", "adapter_model.bin", "non_lora_trainables.bin"):
                (model_path / file).write_bytes((released["model_path"] / file).read_bytes())
        # Through the command line; the ViT-LoRA default is <model-path>/Vit-lora.
        convert_main([
            "--model-base", str(released["base"]), "--model-path", str(model_path), "--output-dir", str(tmp_path / name),
            "--dtype", "float32", "--num-prototypes", str(NUM_PROTOTYPES), "--no-verify",
        ])  # fmt: skip
    pixel_values = torch.randn(
        2, 3, VISION["image_size"], VISION["image_size"], generator=torch.Generator().manual_seed(5)
    )
    features = {}
    for name in ("with", "without"):
        model = SQLlavaForConditionalGeneration.from_pretrained(tmp_path / name, dtype=torch.float64).eval()
        with torch.no_grad():
            features[name] = model.model.vision_tower(pixel_values.double())
    expected_with = reference_vision_features(released, pixel_values)
    expected_without = reference_vision_features(released, pixel_values, with_vit_lora=False)
    # The export stores float32 weights: agreement to float32 precision, relative to the feature scale.
    for got, expected in ((features["with"], expected_with), (features["without"], expected_without)):
        assert (got - expected).abs().max() / expected.abs().max() < 1e-5
    change = (features["with"] - features["without"]).abs().max() / features["without"].abs().max()
    assert change > 1e-2, f"ViT-LoRA barely changes the features ({change:.2e}): was it merged?"


def test_rejects_configs_the_converter_cannot_reproduce(released):
    for override, message in (
        ({"mm_projector_type": "mlp2x_gelu"}, "mlp2x_gelu"),
        ({"image_aspect_ratio": "anyres"}, "anyres"),
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
        ({"mm_hidden_size": 1024}, "mm_hidden_size=1024"),
    ):
        with pytest.raises(ValueError, match=message):
            build_sqllava_config(
                {**released["llava_config"], **override}, VISION, vocab_size=704, image_token_id=700, pad_token_id=701
            )


@pytest.mark.parametrize("field", ["image_aspect_ratio", "mm_vision_select_layer"])
def test_missing_preprocessing_fields_are_errors_not_assumed(released, field):
    """A config without `image_aspect_ratio` is not 'pad' (the authors' `process_images` then skips the padding) and
    one without `mm_vision_select_layer` is not -2 (their tower requires it; their training default is -1)."""
    config = {k: v for k, v in released["llava_config"].items() if k != field}
    with pytest.raises(ValueError, match=rf"config.json has no {field}\b.*Add"):
        build_sqllava_config(config, VISION, vocab_size=704, image_token_id=700, pad_token_id=701)


def test_vicuna_vocabulary_gets_image_32000_pad_32001_and_32064_rows(tmp_path, llama_tokenizer):
    """With the real Llama/Vicuna vocabulary: the ids llava-hf uses and the embeddings padded to a multiple of 64."""
    import copy

    from processing import SQLlavaProcessor

    released = write_released_checkpoint(tmp_path / "released", tokenizer=copy.deepcopy(llama_tokenizer))
    output = tmp_path / "converted"
    convert_original_checkpoint(
        model_base=str(released["base"]), model_path=str(released["model_path"]), output_dir=str(output),
        dtype="bfloat16", num_prototypes=NUM_PROTOTYPES, verify=False,
    )  # fmt: skip
    config = json.loads((output / "config.json").read_text())
    assert (config["image_token_id"], config["pad_token_id"], config["text_config"]["vocab_size"]) == (
        32000,
        32001,
        32064,
    )
    processor = SQLlavaProcessor.from_pretrained(output)
    assert processor.tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]
    assert processor.tokenizer.pad_token_id == 32001

    # The 64 mean rows lower a real token's log-probability by at most log(1 + 64/32000) (the converter's docstring),
    # against the released model's softmax over its 32000 rows; the greedy token is never a new one.
    from modeling_sqllava import SQLlavaForConditionalGeneration

    model = SQLlavaForConditionalGeneration.from_pretrained(output, dtype=torch.float64).eval()
    input_ids = torch.randint(3, 32000, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[0]
    released_logprobs = torch.log_softmax(logits[:, :32000], dim=-1)
    shift = released_logprobs - torch.log_softmax(logits, dim=-1)[:, :32000]
    assert shift.min() > 0 and shift.max() <= math.log(1 + 64 / 32000) + 1e-12
    assert (logits.argmax(-1) < 32000).all()


def test_docstring_example_keeps_the_configured_vision_tower():
    """The example command must not override mm_vision_tower (OpenAI's CLIP is not the released ShareGPT4V tower)."""
    import hub_upload.convert_original as module

    example = module.__doc__.split("```bash")[1].split("```")[0]
    assert "--vision-tower" not in example and "--model-path" in example


def test_a_vision_tower_other_than_mm_vision_tower_is_refused_unless_allowed(tmp_path, released):
    """The authors' loader always loads mm_vision_tower; a tower of another name is an error naming both and the
    override; a local copy of the same folder name, or the override, converts, and the report names the tower."""
    import shutil

    other = tmp_path / "clip-vit-large-patch14-336"
    same_name = tmp_path / "copy" / released["clip_dir"].name
    shutil.copytree(released["clip_dir"], other)
    shutil.copytree(released["clip_dir"], same_name)
    common = {
        "model_base": str(released["base"]), "model_path": str(released["model_path"]), "dtype": "float32",
        "num_prototypes": NUM_PROTOTYPES, "verify": False,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"'clip-vit-large-patch14-336'.*mm_vision_tower=.*'clip'.*--allow-other-vis"):
        convert_original_checkpoint(**common, vision_tower=str(other), output_dir=str(tmp_path / "refused"))
    report = convert_original_checkpoint(**common, vision_tower=str(same_name), output_dir=str(tmp_path / "same"))
    assert report["vision_tower"] == str(same_name)
    report = convert_main([
        "--model-base", str(released["base"]), "--model-path", str(released["model_path"]), "--dtype", "float32",
        "--output-dir", str(tmp_path / "other"), "--num-prototypes", str(NUM_PROTOTYPES), "--no-verify",
        "--vision-tower", str(other), "--allow-other-vision-tower",
    ])  # fmt: skip
    assert report["vision_tower"] == str(other)


def test_an_all_zero_lora_b_adapter_is_reported_as_the_identity(tmp_path, released, caplog):
    """An untrained ViT-LoRA (lora_B zero, as PEFT initialises it) merges as no change: warned, reported, carded."""
    import logging

    from huggingface_hub import ModelCard

    _, report = convert_state_dicts(_config_for(released), **_pieces(released))
    assert report["identity_adapters"] == []
    folders = _damaged_copy(released, tmp_path)
    _rewrite_bin(
        folders["vit_dir"] / "adapter_model.bin",
        lambda s: s.update({k: torch.zeros_like(v) for k, v in s.items() if ".lora_B." in k}),
    )
    with caplog.at_level(logging.WARNING, logger="hub_upload.convert_original"):
        report = convert_original_checkpoint(
            model_base=str(folders["base"]), model_path=str(folders["model_path"]), output_dir=str(tmp_path / "out"),
            dtype="float32", num_prototypes=NUM_PROTOTYPES, verify=False,
        )  # fmt: skip
    assert report["identity_adapters"] == ["vit-lora"] and report["merged_lora"] == {"llm": 14, "vit": 12}
    assert any("vit-lora" in r.message and "is the identity" in r.message for r in caplog.records)
    card = ModelCard.load(tmp_path / "out" / "README.md").text
    assert "identity adapters" in card and "vit-lora" in card


def _with_vit_copy(released: dict, edit=None) -> dict:
    """The LLM adapter as the authors' train.py saves it: with a copy of the ViT-LoRA under the LLaVA model's tower."""
    copy = {
        LLM_LORA_VIT_COPY_PREFIX + k.removeprefix("base_model.model.vision_tower."): v.clone()
        for k, v in released["vit_lora"].items()
    }
    if edit is not None:
        edit(copy)
    return {**released["llm_lora"], **copy}


def test_the_llm_adapters_vit_lora_copy_is_dropped_as_such_and_checked_against_vit_lora(released):
    config = _config_for(released)
    pieces = _pieces(released)
    state, report = convert_state_dicts(config, **dict(pieces, llm_lora=(_with_vit_copy(released), LLM_LORA)))
    copies = {k: v for k, v in report["dropped"].items() if k.startswith("llm-lora:model.vision_tower.vision_tower.")}
    assert len(copies) == VISION["num_hidden_layers"] * len(VIT_TARGETS)
    assert all("copy in the LLM adapter" in reason for reason in copies.values())
    assert report["vit_lora_copies_checked"] == len(released["vit_lora"])
    expected, _ = convert_state_dicts(config, **pieces)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)

    key = "encoder.layers.1.mlp.fc2.lora_A.weight"

    def alter(copy):
        copy[LLM_LORA_VIT_COPY_PREFIX + "vision_model." + key] += 1e-3

    with pytest.raises(ConversionError, match=rf"vision_tower\.vision_model\.{re.escape(key)}.*different runs"):
        convert_state_dicts(config, **dict(pieces, llm_lora=(_with_vit_copy(released, alter), LLM_LORA)))
    # Without a ViT-LoRA there is nothing to compare the copy with: it is dropped, unchecked.
    _, report = convert_state_dicts(
        config, **dict(pieces, llm_lora=(_with_vit_copy(released, alter), LLM_LORA), vit_lora=None)
    )
    assert report["vit_lora_copies_checked"] == 0


# ------------------------------------------------------------------------------------ half precision and defaults


@pytest.mark.slow
def test_float16_conversion_with_near_tied_patches_is_accepted_and_its_flips_reported(tmp_path):
    """As many prototypes as patches (144): many patches are tied to float32 precision. Rounding the weights to
    float16 moves such a patch to another prototype, which moves the logits by ~10x the float16 tolerance although
    the conversion is right; with the assignments pinned to the float32 model's, the check passes, and the flips are
    reported with their similarity gap (a near tie). Run in float16, nearly every patch lands on a tie."""
    vision = dict(VISION, image_size=168)  # 12 x 12 patches
    released = write_released_checkpoint(
        tmp_path / "released", vision=vision, text=dict(TEXT, initializer_range=0.02), lora_std=0.05
    )
    report = convert_original_checkpoint(
        model_base=str(released["base"]), model_path=str(released["model_path"]), output_dir=str(tmp_path / "fp16"),
        dtype="float16", num_prototypes=144,
    )  # fmt: skip
    figures = {k: v for k, v in report.items() if "error" in k or "flip" in k}
    print("float16 conversion, 144 patches / 144 prototypes:", json.dumps(figures, indent=1))  # pytest -s shows it
    assert report["verified"] and report["max_relative_error"] < report["tolerance"] == 5e-3
    assert report["native_relative_error"] < report["native_tolerance"]
    assert report["max_relative_error"] <= report["unpinned_relative_error"]
    assert report["native_relative_error"] <= report["native_unpinned_relative_error"]
    # Ties in float16 arithmetic: the share of patches that flip is large and deterministic enough to bound.
    assert report["native_prototype_flip_fraction"] > 0.2
    if report["prototype_flip_fraction"]:  # platform-dependent which float32 near-ties flip; each must be a near tie
        assert report["prototype_flip_max_margin"] < 1e-4


def test_default_dtype_is_the_released_bfloat16(tmp_path, released):
    from safetensors import safe_open

    convert_main([
        "--model-base", str(released["base"]), "--model-path", str(released["model_path"]),
        "--output-dir", str(tmp_path / "out"), "--num-prototypes", str(NUM_PROTOTYPES), "--no-verify",
    ])  # fmt: skip
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}  # noqa: SIM118


# ----------------------------------------------------------------------------- load errors name file and key


class _WritesMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _damaged_copy(released: dict, tmp_path: Path) -> dict:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(released["root"], root)
    return {name: root / released[name].relative_to(released["root"]) for name in ("base", "model_path", "vit_dir")}


def _rewrite_bin(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _rewrite_json(path: Path, edit) -> None:
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))


LOAD_ERROR_CASES = {
    "truncated weights": (
        lambda d: (d["base"] / "pytorch_model.bin").write_bytes((d["base"] / "pytorch_model.bin").read_bytes()[:900]),
        r"base/pytorch_model.bin could not be read .*truncated",
    ),
    "missing tensor": (
        lambda d: _rewrite_bin(d["base"] / "pytorch_model.bin", lambda s: s.pop("model.norm.weight")),
        r"missing 1 weight\(s\) from model-base \(.*base/pytorch_model.bin\): \['model.language_model.norm.weight'\]",
    ),
    "unknown tensor": (
        lambda d: _rewrite_bin(
            d["base"] / "pytorch_model.bin", lambda s: s.update({"model.gate.weight": torch.ones(1)})
        ),
        r"model-base \(.*base/pytorch_model.bin\) has 1 key\(s\) the converter does not know: \['model.gate.weight'\]",
    ),
    "projector misses a tensor": (
        lambda d: _rewrite_bin(
            d["model_path"] / "non_lora_trainables.bin",
            lambda s: s.pop("base_model.model.model.mm_projector.mlp.2.bias"),
        ),
        r"projector weights in .*sqllava-lora/non_lora_trainables.bin miss \['linear_2.bias'\]",
    ),
    "config value of the wrong type": (
        lambda d: _rewrite_json(d["model_path"] / "config.json", lambda c: c.update(hidden_size="64")),
        r"sqllava-lora/config.json: `hidden_size` = '64' \(str\) must be an integer",
    ),
    "config not JSON": (
        lambda d: (d["model_path"] / "config.json").write_text('{"hidden_size": 64,'),
        r"sqllava-lora/config.json is not valid JSON",
    ),
    "adapter config value of the wrong type": (
        lambda d: _rewrite_json(d["vit_dir"] / "adapter_config.json", lambda c: c.update(lora_alpha="3")),
        r"Vit-lora/adapter_config.json: `lora_alpha` = '3' \(str\) must be a number",
    ),
    "index without weight_map": (
        lambda d: [(d["base"] / "pytorch_model.bin").unlink(),
                   (d["base"] / "pytorch_model.bin.index.json").write_text('{"metadata": {}}')],
        r"base/pytorch_model.bin.index.json: no `weight_map`",
    ),
    "index naming a shard outside the folder": (
        lambda d: [(d["base"] / "pytorch_model.bin").unlink(), (d["base"] / "pytorch_model.bin.index.json").write_text(
            json.dumps({"weight_map": {"lm_head.weight": "../clip/model.safetensors"}}))],
        r"names the shard '../clip/model.safetensors', which is not a file in .*base",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LOAD_ERROR_CASES))
def test_load_errors_name_the_file_and_the_key(tmp_path, released, case):
    damage, message = LOAD_ERROR_CASES[case]
    folders = _damaged_copy(released, tmp_path)
    damage(folders)
    with pytest.raises((ValueError, TypeError), match=message):
        convert_original_checkpoint(
            model_base=str(folders["base"]), model_path=str(folders["model_path"]), output_dir=str(tmp_path / "out"),
            dtype="float32", num_prototypes=NUM_PROTOTYPES, verify=False,
        )  # fmt: skip


def test_truncated_safetensors_adapter_is_named(tmp_path):
    released = write_released_checkpoint(tmp_path / "released", weights_format="safetensors")
    adapter = released["vit_dir"] / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"Vit-lora/adapter_model.safetensors is not a readable safetensors file"):
        convert_original_checkpoint(
            model_base=str(released["base"]), model_path=str(released["model_path"]), output_dir=str(tmp_path / "o"),
            num_prototypes=NUM_PROTOTYPES, verify=False,
        )  # fmt: skip


def test_released_folders_run_no_code(tmp_path, released, monkeypatch):
    """A pickle with a payload as weights is refused by name (torch.load weights_only), and a tokenizer folder asking
    for its own code is refused even if someone would answer transformers' interactive prompt with "y"."""
    import builtins

    folders = _damaged_copy(released, tmp_path)
    marker = tmp_path / "MARKER"
    torch.save({"model.embed_tokens.weight": _WritesMarker(marker)}, folders["base"] / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"base/pytorch_model.bin is a pickle that holds more than tensors"):
        convert_original_checkpoint(
            model_base=str(folders["base"]), model_path=str(folders["model_path"]), output_dir=str(tmp_path / "o"),
            num_prototypes=NUM_PROTOTYPES, verify=False,
        )  # fmt: skip
    assert not marker.exists()

    folders = _damaged_copy(released, tmp_path / "second")
    (folders["base"] / "tokenization_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import LlamaTokenizerFast as EvilTokenizer\n"
    )
    _rewrite_json(
        folders["base"] / "tokenizer_config.json",
        lambda c: c.update(
            tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
        ),
    )  # fmt: skip
    monkeypatch.setattr(builtins, "input", lambda *args: "y")
    with pytest.raises(ValueError, match=r"base/tokenizer_config.json asks for custom tokenizer code"):
        convert_original_checkpoint(
            model_base=str(folders["base"]), model_path=str(folders["model_path"]), output_dir=str(tmp_path / "o2"),
            num_prototypes=NUM_PROTOTYPES, verify=False,
        )  # fmt: skip
    assert not marker.exists()
