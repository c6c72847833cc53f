"""Training-speed options: the loss kernels agree, liger is wired to the inner Llama, every-n-layer checkpointing,
metrics without host syncs, bf16 adapters, and the embedded default's shipped towers.

liger-kernel needs CUDA and is not installed on CPU CI: its wiring is checked against a stand-in package that has
liger's API (`apply_liger_kernel_to_llama(..., model=)` and `LigerFusedLinearCrossEntropyLoss`), its loss written
here from liger's documented semantics in plain torch; with the real package importable, the modules it patches are
checked too. The GPU run itself is owed (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import copy
import json
import sys
import types

import pytest
import torch

pytest.importorskip("trl")
peft = pytest.importorskip("peft")

from recipes.collator import IGNORE_INDEX
from tests.test_collator import CONVERSATION, build_processor, make_record
from tests.test_trainer import LORA_TARGETS, lora_model, make_trainer


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    return build_processor(tiny_tokenizer)


def records(n=4):
    return [make_record(i, turns=CONVERSATION[: 1 + i % 4]) for i in range(n)]


# ---- liger stand-in ----


class _FakeLigerFLCE(torch.nn.Module):
    """liger's `LigerFusedLinearCrossEntropyLoss` semantics in plain torch: `loss(lin_weight, input, target, bias)` is
    the cross-entropy of `input @ lin_weight.T + bias` against `target`, 0 where `target == ignore_index`;
    `reduction="none"` gives one value per row; `return_token_accuracy` adds per-row arg-max hits."""

    def __init__(self, ignore_index=-100, reduction="mean", return_token_accuracy=False, **kwargs):
        super().__init__()
        self.ignore_index, self.reduction, self.return_token_accuracy = ignore_index, reduction, return_token_accuracy

    def forward(self, lin_weight, _input, target, bias=None):
        logits = torch.nn.functional.linear(_input, lin_weight, bias)
        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        accuracy = ((logits.argmax(-1) == target) & (target != self.ignore_index)).float()
        return types.SimpleNamespace(loss=loss, z_loss=None, token_accuracy=accuracy, predicted_tokens=None)


@pytest.fixture
def fake_liger(monkeypatch):
    """A `liger_kernel` package with liger's API, recording what it is applied to; device check bypassed (CPU)."""
    calls = []

    def apply_liger_kernel_to_llama(
        rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, swiglu=True, model=None
    ):
        calls.append(
            {"rope": rope, "cross_entropy": cross_entropy, "fused_linear_cross_entropy": fused_linear_cross_entropy,
             "rms_norm": rms_norm, "swiglu": swiglu, "model": model}
        )  # fmt: skip

    package = types.ModuleType("liger_kernel")
    transformers_module = types.ModuleType("liger_kernel.transformers")
    transformers_module.apply_liger_kernel_to_llama = apply_liger_kernel_to_llama
    transformers_module.LigerFusedLinearCrossEntropyLoss = _FakeLigerFLCE
    package.transformers = transformers_module
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", transformers_module)
    monkeypatch.setattr("recipes.liger.check_liger_usable", lambda device: None)
    return calls


def test_liger_is_applied_to_the_inner_llama_not_the_sqllava_model(tiny_tokenizer, processor, tmp_path, fake_liger):
    model = lora_model(tiny_tokenizer)
    inner = model.get_base_model().model.language_model
    trainer = make_trainer(model, processor, tmp_path, liger_kernels=True)
    assert trainer._sq_loss_kernel == "liger"  # "auto" picks liger's fused cross-entropy with liger_kernels
    assert len(fake_liger) == 1
    call = fake_liger[0]
    assert call["model"] is inner and type(inner).__name__ == "LlamaModel"
    assert (call["rope"], call["rms_norm"], call["swiglu"]) == (True, True, True)
    # The loss stays ours (per-token, split into answers and questions): liger's own CE patches are off.
    assert (call["cross_entropy"], call["fused_linear_cross_entropy"]) == (False, False)


def test_liger_refuses_a_language_model_that_is_not_llama(fake_liger):
    from modeling_sqllava import SQLlavaForConditionalGeneration
    from recipes.liger import apply_liger_to_language_model
    from recipes.tiny import tiny_model_config

    config = tiny_model_config()
    config.text_config.model_type = "mistral"
    model = SQLlavaForConditionalGeneration(config)
    model.model.language_model.config.model_type = "mistral"
    with pytest.raises(ValueError, match="model_type='mistral'"):
        apply_liger_to_language_model(model)
    assert not fake_liger


def test_liger_without_the_package_or_on_cpu_fails_clearly(tiny_tokenizer, processor, tmp_path, monkeypatch):
    from recipes import liger

    monkeypatch.setattr(liger, "is_liger_available", lambda: False)
    with pytest.raises(ImportError, match=r"sqllava\[liger\]"):
        make_trainer(lora_model(tiny_tokenizer), processor, tmp_path, liger_kernels=True)
    monkeypatch.setattr(liger, "is_liger_available", lambda: True)
    monkeypatch.setattr(liger.importlib.metadata, "version", lambda name: "0.8.1")
    with pytest.raises(ImportError, match="0.8.2"):
        liger.check_liger_usable("cuda")
    monkeypatch.setattr(liger.importlib.metadata, "version", lambda name: "0.8.2")
    with pytest.raises(ValueError, match="CUDA device"):
        liger.check_liger_usable("cpu")
    liger.check_liger_usable("cuda")  # installed, recent, on a GPU: no error


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"loss_kernel": "liger"}, "liger_kernels=True"),
        ({"use_liger_kernel": True}, "liger_kernels=True"),
        ({"loss_kernel": "fast"}, "loss_kernel"),
        ({"gradient_checkpointing_every_n_layers": 0}, "gradient_checkpointing_every_n_layers"),
    ],
)
def test_config_rejects_unusable_kernel_settings(tmp_path, overrides, match):
    from tests.test_trainer import make_args

    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **overrides)


def test_real_liger_patches_the_inner_llama_modules(tiny_tokenizer, monkeypatch):
    """With liger-kernel importable (it imports without a GPU when Triton is installed): RMSNorm / SwiGLU forwards of
    the inner Llama are liger's, the vision tower's are not, and RoPE is liger's."""
    liger_transformers = pytest.importorskip("liger_kernel.transformers")
    from transformers.models.llama import modeling_llama

    from recipes.liger import apply_liger_to_language_model

    # liger installs RoPE and its classes on transformers' module for the whole process: restored after this test,
    # or every later CPU test would call its Triton kernels.
    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))

    model = lora_model(tiny_tokenizer)
    apply_liger_to_language_model(model)
    language_model = model.get_base_model().model.language_model
    for layer in language_model.layers:
        assert layer.mlp.forward.__func__ is liger_transformers.LigerSwiGLUMLP.forward
        assert layer.input_layernorm.forward.__func__ is liger_transformers.LigerRMSNorm.forward
    assert language_model.norm.forward.__func__ is liger_transformers.LigerRMSNorm.forward
    vision_layer = model.get_base_model().model.vision_tower.encoder.layers[0]
    assert "forward" not in vars(vision_layer.mlp) and "forward" not in vars(vision_layer.layer_norm1)
    assert modeling_llama.apply_rotary_pos_emb is liger_transformers.liger_rotary_pos_emb


# ---- the loss kernels agree ----


@pytest.mark.parametrize("kernel", ["trl", "liger"])
def test_every_loss_kernel_gives_the_loss_and_split_of_the_full_logits(
    tiny_tokenizer, processor, tmp_path, kernel, request
):
    """float64: TRL's fused head and liger's fused CE (the stand-in on CPU) give the loss, the logged answer/question
    losses and the gradients of the full-logits path."""
    if kernel == "liger":
        request.getfixturevalue("fake_liger")
    model = lora_model(tiny_tokenizer, torch.float64)
    results = {}
    for name in ("logits", kernel):
        m = copy.deepcopy(model)
        overrides = {"liger_kernels": True} if name == "liger" else {"loss_kernel": name}
        trainer = make_trainer(m, processor, tmp_path / name, sq_ratio=1.0, sq_loss_weight=2.0, **overrides)
        assert trainer._sq_loss_kernel == name
        batch = trainer.data_collator(records())
        batch["pixel_values"] = batch["pixel_values"].double()
        m.train()
        loss = trainer.compute_loss(m, dict(batch))
        loss.backward()
        trainer.log({})
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        results[name] = (loss.item(), trainer.state.log_history[-1], grads)
    (loss_ref, log_ref, grads_ref), (loss_k, log_k, grads_k) = results["logits"], results[kernel]
    # TRL's kernel accumulates the LM-head products in float32 whatever the input dtype (trl.kernels.chunked_logprob),
    # so it agrees to float32 rounding; the stand-in for liger computes in the input dtype.
    rel = 1e-6 if kernel == "trl" else 1e-10
    assert loss_k == pytest.approx(loss_ref, rel=rel)
    for key in ("loss_answer", "loss_question", "question_token_fraction", "mean_token_accuracy"):
        assert log_k[key] == pytest.approx(log_ref[key], rel=rel), key
    # The entropy is pooled where the kernel gives it: TRL's fused head does, liger's kernel does not (none logged).
    assert ("entropy" in log_k) == (kernel == "trl") and "entropy" in log_ref
    assert grads_k.keys() == grads_ref.keys() and len(grads_ref) > 10
    scale = max(g.abs().max().item() for g in grads_ref.values())
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_k[name], grad, rtol=0, atol=rel * scale, msg=name)


def test_auto_loss_kernel_is_the_full_logits_on_cpu(tiny_tokenizer, processor, tmp_path):
    trainer = make_trainer(lora_model(tiny_tokenizer), processor, tmp_path)
    assert trainer.args.loss_kernel == "auto" and trainer._sq_loss_kernel == "logits"


# ---- no host sync in the training step ----


def test_training_step_metrics_never_wait_for_the_device(tiny_tokenizer, processor, tmp_path, monkeypatch):
    """compute_loss (TRL's fused head, the GPU default) and its metrics call no `.item()` / `.tolist()` and no
    gather: they are summed on the device and reduced once, in `log`."""
    model = lora_model(tiny_tokenizer)
    trainer = make_trainer(model, processor, tmp_path, loss_kernel="trl")
    batches = [trainer.data_collator(records()[:2]), trainer.data_collator(records()[2:])]
    model.train()

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in the training step")

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "item", forbidden)
        patch.setattr(torch.Tensor, "tolist", forbidden)
        patch.setattr(trainer.accelerator, "gather_for_metrics", forbidden)
        patch.setattr(trainer.accelerator, "gather", forbidden)
        for batch in batches:
            trainer.compute_loss(model, dict(batch)).backward()
    trainer.log({})
    logged = trainer.state.log_history[-1]
    assert {"loss_answer", "loss_question", "entropy", "mean_token_accuracy", "num_tokens"} <= logged.keys()
    assert logged["num_tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
    trainer.log({})  # the sums were reset: a second log adds nothing
    assert trainer.state.log_history[-1]["num_tokens"] == logged["num_tokens"]
    assert "loss_answer" not in trainer.state.log_history[-1]


# ---- every n-th layer checkpointed ----


def _four_layer_model(tokenizer):
    from modeling_sqllava import SQLlavaForConditionalGeneration
    from recipes.tiny import tiny_model_config

    config = tiny_model_config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    config.text_config.num_hidden_layers = 4
    torch.manual_seed(0)
    return SQLlavaForConditionalGeneration(config).double()


def test_every_second_layer_is_recomputed_and_the_gradients_do_not_change(tiny_tokenizer, processor):
    from recipes.collator import SelfQuestioningCollator
    from recipes.trainer import select_checkpointed_layers

    reference = _four_layer_model(tiny_tokenizer).train()
    model = copy.deepcopy(reference)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert select_checkpointed_layers(model, 2) == [0, 2]
    layers = model.model.language_model.layers
    assert [layer.gradient_checkpointing for layer in layers] == [True, False, True, False]
    assert all(layer.gradient_checkpointing for layer in model.model.vision_tower.encoder.layers)

    calls = [0] * len(layers)
    for index, layer in enumerate(layers):
        layer.self_attn.register_forward_hook(lambda m, a, o, i=index: calls.__setitem__(i, calls[i] + 1))
    collator = SelfQuestioningCollator(processor=processor, sq_ratio=0.0, max_length=None)
    batch = collator(records())
    batch.pop("question_mask")
    batch["pixel_values"] = batch["pixel_values"].double()
    grads = []
    for m in (reference, model):
        m(**batch, use_cache=False).loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert calls == [2, 1, 2, 1]  # checkpointed layers run again in the backward pass
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-10, atol=1e-14, msg=name)


def test_trainer_applies_every_n_layers_at_train_start(tiny_tokenizer, processor, tmp_path):
    model = lora_model(tiny_tokenizer)
    trainer = make_trainer(
        model, processor, tmp_path, max_steps=1, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False}, gradient_checkpointing_every_n_layers=2,
    )  # fmt: skip
    trainer.train()
    flags = [layer.gradient_checkpointing for layer in model.get_base_model().model.language_model.layers]
    assert flags == [True, False]


# ---- bf16 adapters ----


def _lora_curve(tokenizer, processor, model_dtype, adapter_dtype_float32, steps=16):
    from recipes.collator import SelfQuestioningCollator
    from recipes.tiny import build_tiny_model

    model = build_tiny_model(tokenizer).to(model_dtype)
    model.requires_grad_(False)
    torch.manual_seed(1)
    config = peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, modules_to_save=["multi_modal_projector"]
    )
    model = peft.get_peft_model(model, config, autocast_adapter_dtype=adapter_dtype_float32)
    lora_dtypes = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    collator = SelfQuestioningCollator(processor, sq_ratio=0.5, seed=0)
    data = [make_record(i, turns=CONVERSATION[: 1 + i % 4]) for i in range(4)]
    batches = [collator(data[:2]), collator(data[2:])]
    losses = []
    for step in range(steps):
        batch = {k: v for k, v in batches[step % 2].items() if k != "question_mask"}
        batch["pixel_values"] = batch["pixel_values"].to(model_dtype)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, lora_dtypes


def test_bf16_adapters_train_like_float32_adapters(tiny_tokenizer, processor):
    """Tiny stage-2 training (bf16 weights, LoRA r=8 on both towers, the tiny recipe's lr 2e-3, no autocast, as the
    1.34x measurement): the loss curve with bf16 adapters stays within 0.01 of the one with float32 adapters.

    Why 0.01: the bf16 weights alone (float32 adapters) move this curve by about 2e-3 from an all-float32 run, and the
    curve falls by about 0.28 over the 16 steps; an optimizer whose bf16 updates were lost to rounding would stay
    near the start and miss by far more than 0.01, while the bf16 adapters measured about 2e-3 from float32 ones.
    """
    fp32_adapters, dtypes32 = _lora_curve(tiny_tokenizer, processor, torch.bfloat16, True)
    bf16_adapters, dtypes16 = _lora_curve(tiny_tokenizer, processor, torch.bfloat16, False)
    assert dtypes32 == {torch.float32} and dtypes16 == {torch.bfloat16}
    assert fp32_adapters[0] - fp32_adapters[-1] > 0.2  # both learn
    assert bf16_adapters[0] - bf16_adapters[-1] > 0.2
    assert max(abs(a - b) for a, b in zip(fp32_adapters, bf16_adapters)) < 0.01


def test_stage2_adapters_follow_the_weights_dtype_by_default(tiny_tokenizer):
    from recipes.common import ModelArguments
    from recipes.finetune import add_stage2_adapters
    from recipes.tiny import build_tiny_model

    assert ModelArguments().lora_dtype == "auto"
    for lora_dtype, expected in (("auto", torch.bfloat16), ("float32", torch.float32)):
        model = build_tiny_model(tiny_tokenizer).to(torch.bfloat16)
        args = ModelArguments(lora_r=4, vision_lora_r=4, lora_dtype=lora_dtype)
        model = add_stage2_adapters(model, args)
        assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {expected}, lora_dtype


# ---- the embedded default's warm towers ----


def test_towers_are_copied_from_a_matching_manifest_and_built_otherwise(tmp_path):
    from recipes.build_tiny_towers import write_towers
    from recipes.run_tiny import SHAPES_IMAGE_SIZE, prepare_towers
    from recipes.synthetic import generate_shapes_dataset

    shipped = tmp_path / "shipped"
    manifest = write_towers(str(shipped), num_train=12, seed=0, lm_steps=2, num_eval=2)
    assert sorted(p.name for p in shipped.iterdir()) == ["clip-vision", "llama", "manifest.json"]
    data = generate_shapes_dataset(tmp_path / "data", num_train=12, num_eval=3, seed=0, image_size=SHAPES_IMAGE_SIZE)
    paths, source = prepare_towers(str(tmp_path / "run1"), data, seed=0, lm_steps=2, shipped_dir=str(shipped))
    assert source == "shipped"
    for name, folder in (("vision", "clip-vision"), ("text", "llama")):
        assert (shipped / folder / "model.safetensors").read_bytes() == (
            tmp_path / "run1" / folder / "model.safetensors"
        ).read_bytes()
        assert paths[name] == str(tmp_path / "run1" / folder)
    assert json.loads((shipped / "manifest.json").read_text())["towers"] == manifest["towers"]
    _, source = prepare_towers(str(tmp_path / "run2"), data, seed=0, lm_steps=3, shipped_dir=str(shipped))
    assert source == "built"  # other settings: the shipped towers do not apply
    other = generate_shapes_dataset(tmp_path / "other", num_train=13, num_eval=3, seed=0, image_size=SHAPES_IMAGE_SIZE)
    _, source = prepare_towers(str(tmp_path / "run3"), other, seed=0, lm_steps=2, shipped_dir=str(shipped))
    assert source == "built"  # other training data


@pytest.mark.slow
def test_shipped_towers_were_built_for_the_default_run(tmp_path):
    """`recipes/tiny_towers/manifest.json` matches what `python -m recipes.run_tiny` (defaults) would build: same
    data, tokenizer and settings. Fails after a change to the generator or tokenizer: rerun
    `python -m recipes.build_tiny_towers`."""
    from recipes.run_tiny import SHAPES_IMAGE_SIZE, SHIPPED_TOWERS_DIR, build_parser, towers_manifest
    from recipes.synthetic import generate_shapes_dataset

    defaults = build_parser().parse_args([])
    data = generate_shapes_dataset(
        tmp_path / "shapes", num_train=defaults.num_train, num_eval=2, seed=defaults.seed, image_size=SHAPES_IMAGE_SIZE
    )
    wanted = towers_manifest(data, seed=defaults.seed, lm_steps=defaults.lm_steps)
    with open(f"{SHIPPED_TOWERS_DIR}/manifest.json", encoding="utf-8") as f:
        assert json.load(f)["towers"] == wanted


def test_label_mask_of_the_liger_head_matches_the_shifted_labels(tiny_tokenizer, processor, fake_liger):
    """`model(..., liger_lm_head=True)` scores the shifted labels: -log p of label t+1 at position t, 0 if ignored."""
    from recipes.collator import SelfQuestioningCollator
    from recipes.liger import add_liger_lm_head
    from recipes.tiny import build_tiny_model

    model = build_tiny_model(tiny_tokenizer).double()
    batch = SelfQuestioningCollator(processor, sq_ratio=0.0)(records(2))
    batch.pop("question_mask")
    batch["pixel_values"] = batch["pixel_values"].double()
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
    add_liger_lm_head(model)
    with torch.no_grad():
        out = model(**batch, use_cache=False, liger_lm_head=True)
    labels = batch["labels"][:, 1:]
    assert torch.equal(out.label_mask, labels != IGNORE_INDEX)
    expected = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(out.log_probs, expected * out.label_mask, rtol=1e-10, atol=1e-12)
    # Without the flag the model is unchanged (generation, the other loss paths).
    with torch.no_grad():
        assert torch.equal(model(**batch, use_cache=False).logits, logits)


@pytest.mark.slow
def test_shipped_towers_load_fully_under_both_transformers_versions(tmp_path):
    """The shipped towers load with no missing or unexpected key, here and under the other transformers (5.x saves
    CLIPVisionModel without the `vision_model.` level, which 4.57 would silently re-initialise), and give the same
    vision features and LM logits in both."""
    import os
    import subprocess

    from recipes.run_tiny import SHIPPED_TOWERS_DIR
    from tests.conftest import REPO_ROOT, other_transformers_python

    script = f"""
import sys, torch
from transformers import CLIPVisionModel, LlamaForCausalLM
torch.manual_seed(0)
pixels, ids = torch.randn(2, 3, 84, 84), torch.randint(3, 600, (2, 12))
out = {{}}
for name, cls in (("clip-vision", CLIPVisionModel), ("llama", LlamaForCausalLM)):
    model, info = cls.from_pretrained("{SHIPPED_TOWERS_DIR}/" + name, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], (name, info)
    with torch.no_grad():
        out[name] = (model(pixel_values=pixels).last_hidden_state if name == "clip-vision"
                     else model(input_ids=ids).logits)
torch.save(out, sys.argv[1])
"""
    here = tmp_path / "here.pt"
    subprocess.run([sys.executable, "-c", script, str(here)], check=True, cwd=tmp_path, timeout=300)
    assert {"clip-vision", "llama"} == set(torch.load(here))
    python = other_transformers_python()
    if python is None:
        pytest.skip("no other transformers environment; set SQLLAVA_OTHER_PYTHON to its python")
    there = tmp_path / "there.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [python, "-c", script, str(there)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name, value in torch.load(here).items():
        torch.testing.assert_close(torch.load(there)[name], value, rtol=1e-5, atol=1e-6, msg=name)
