"""SQLlavaTrainer / SQLlavaSFTConfig on the tiny model: loss, metrics, learning rates, audit, gradient accumulation.

The loss is checked against a float64 cross-entropy written from the equations on the model's own logits; the
learning rates against AdamW's first update (|delta| = lr where the gradient is far above eps); gradient
accumulation against one large batch.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

pytest.importorskip("trl")
peft = pytest.importorskip("peft")

from recipes.collator import IGNORE_INDEX, SelfQuestioningCollator  # noqa: E402
from recipes.trainer import (  # noqa: E402
    build_parameter_groups,
    find_parameters_without_gradient,
    parameter_component,
)
from tests.test_collator import CONVERSATION, build_processor, make_record  # noqa: E402

LORA_TARGETS = (
    r"model\.(vision_tower\.encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
    r"|language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj)))"
)


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    return build_processor(tiny_tokenizer)


def lora_model(tokenizer, dtype=torch.float32):
    """Tiny SQ-LLaVA with LoRA on both towers and a trainable (modules_to_save) projector, as in stage 2."""
    from recipes.tiny import build_tiny_model

    model = build_tiny_model(tokenizer).to(dtype)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, modules_to_save=["multi_modal_projector"]
    )
    return peft.get_peft_model(model, config)


def records(n=4):
    # Different numbers of turns -> different numbers of labelled tokens per sample (normalisation matters).
    return [make_record(i, turns=CONVERSATION[: 1 + i % 4]) for i in range(n)]


def make_args(tmp_path, **overrides):
    from recipes.trainer import SQLlavaSFTConfig

    kwargs = dict(
        output_dir=str(tmp_path),
        report_to="none",
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        per_device_train_batch_size=2,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        dataloader_num_workers=0,
        disable_tqdm=True,
        sq_ratio=1.0,
    )
    kwargs.update(overrides)
    return SQLlavaSFTConfig(**kwargs)


def make_trainer(model, processor, tmp_path, dataset=None, **overrides):
    from recipes.data import ConversationDataset
    from recipes.trainer import SQLlavaTrainer

    dataset = ConversationDataset(records()) if dataset is None else dataset
    return SQLlavaTrainer(
        model=model, args=make_args(tmp_path, **overrides), train_dataset=dataset, processing_class=processor
    )


def reference_ce(model, batch):
    """Per-token float64 CE of the next-token labels from the model's logits: (answer sum, answer n, q sum, q n)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "question_mask")}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].double()
    with torch.no_grad():
        logits = model(**inputs).logits.double()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    labels, questions = batch["labels"][:, 1:], batch["question_mask"][:, 1:]
    sums = [0.0, 0, 0.0, 0]
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            label = int(labels[b, t])
            if label == IGNORE_INDEX:
                continue
            ce = -float(log_probs[b, t, label])
            slot = 2 if bool(questions[b, t]) else 0
            sums[slot] += ce
            sums[slot + 1] += 1
    return sums


# ---- config ----


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("sq_ratio", 1.5, "sq_ratio"),
        ("sq_loss_weight", -1.0, "sq_loss_weight"),
        ("projector_lr", -1e-5, "projector_lr"),
        ("stage", "stage3", "stage"),
        ("audit_trainable", "maybe", "audit_trainable"),
        ("remove_unused_columns", True, "remove_unused_columns"),
        ("packing", True, "packing"),
    ],
)
def test_config_rejects_bad_values(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **{field: value})


def test_config_unset_bf16_follows_the_hardware(tmp_path):
    from transformers.utils import is_torch_bf16_gpu_available

    from recipes.trainer import SQLlavaSFTConfig

    args = SQLlavaSFTConfig(output_dir=str(tmp_path), report_to="none")
    assert args.bf16 == is_torch_bf16_gpu_available()


def test_config_vlm_defaults(tmp_path):
    args = make_args(tmp_path)
    assert args.remove_unused_columns is False and args.dataset_kwargs == {"skip_prepare_dataset": True}
    assert args.pad_to_multiple_of == 8 and args.max_length == 2048
    assert (args.sq_ratio, args.sq_loss_weight, args.stage, args.audit_trainable) == (1.0, 1.0, "finetune", "error")


# ---- parameter groups (no training) ----


def test_parameter_components_and_groups_without_peft(tiny_tokenizer):
    from recipes.tiny import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    model.model.language_model.layers[0].self_attn.q_proj.requires_grad_(True)
    decay = {n for n, _ in model.named_parameters() if "bias" not in n}
    groups = build_parameter_groups(model, decay, learning_rate=1e-3, weight_decay=0.1, projector_lr=2e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g["name"]: (g["lr"], g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in groups}
    assert set(by_group) == {"llm", "projector", "projector.no_decay"}  # no vision group: nothing trainable there
    assert by_group["llm"][:2] == (1e-3, 0.1)
    assert by_group["projector"][:2] == (2e-5, 0.1) and by_group["projector.no_decay"][:2] == (2e-5, 0.0)
    assert all(n.endswith("bias") for n in by_group["projector.no_decay"][2])
    prefix = "base_model.model.model."
    assert parameter_component(prefix + "vision_tower.encoder.layers.0.mlp.fc1.lora_A.default.weight") == "vision"
    assert parameter_component(prefix + "multi_modal_projector.modules_to_save.default.linear_1.weight") == "projector"
    assert parameter_component("base_model.model.lm_head.weight") == "llm"


def test_audit_helper_reports_missing_and_zero_but_not_fresh_lora_a():
    a = torch.nn.Parameter(torch.ones(2))
    b = torch.nn.Parameter(torch.zeros(2))
    used = torch.nn.Parameter(torch.ones(2))
    zero = torch.nn.Parameter(torch.ones(2))
    unused = torch.nn.Parameter(torch.ones(2))
    a.grad, b.grad, used.grad, zero.grad = torch.zeros(2), torch.ones(2), torch.ones(2), torch.zeros(2)
    named = [("x.lora_A.default.weight", a), ("x.lora_B.default.weight", b), ("used", used), ("zero", zero),
             ("unused", unused)]
    assert find_parameters_without_gradient(named) == (["unused"], ["zero"])
    b.data.fill_(1.0)  # once lora_B is non-zero, a zero lora_A gradient is suspicious
    assert find_parameters_without_gradient(named) == (["unused"], ["x.lora_A.default.weight", "zero"])


# ---- loss ----


def test_loss_equals_float64_hand_computation(tiny_tokenizer, processor, tmp_path):
    """loss = sum CE / labelled tokens; sq_loss_weight=w scales question CE; metrics are per-role token means."""
    model = lora_model(tiny_tokenizer, torch.float64)
    trainer = make_trainer(model, processor, tmp_path)
    model.train()
    batch = trainer.data_collator(records())
    batch["pixel_values"] = batch["pixel_values"].double()
    ans_sum, ans_n, q_sum, q_n = reference_ce(model, batch)
    assert q_n > 0 and ans_n > 0

    loss = trainer.compute_loss(model, dict(batch))
    assert loss.item() == pytest.approx((ans_sum + q_sum) / (ans_n + q_n), rel=2e-6)
    trainer.log({})
    logged = trainer.state.log_history[-1]
    assert logged["loss_answer"] == pytest.approx(ans_sum / ans_n, rel=2e-6)
    assert logged["loss_question"] == pytest.approx(q_sum / q_n, rel=2e-6)
    assert logged["question_token_fraction"] == pytest.approx(q_n / (ans_n + q_n))

    trainer.args.sq_loss_weight = 2.5
    loss = trainer.compute_loss(model, dict(batch))
    assert loss.item() == pytest.approx((ans_sum + 2.5 * q_sum) / (ans_n + q_n), rel=2e-6)
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(1000))
    assert loss.item() == pytest.approx((ans_sum + 2.5 * q_sum) / 1000, rel=2e-6)


def test_gradient_accumulation_matches_one_large_batch(tiny_tokenizer, processor, tmp_path):
    """2 micro-batches of 2 with num_items_in_batch give the gradients of one batch of 4 (float64)."""
    model = lora_model(tiny_tokenizer, torch.float64)
    trainer = make_trainer(model, processor, tmp_path, gradient_accumulation_steps=2)
    data = records()
    small = [trainer.data_collator(data[:2]), trainer.data_collator(data[2:])]
    large = [trainer.data_collator(data)]
    counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in small]
    assert counts[0] != counts[1]  # unequal micro-batches: a per-micro-batch mean would give other gradients

    def gradients(batches):
        model.zero_grad()
        num_items = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
        assert int(num_items) == sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        trainer.current_gradient_accumulation_steps = len(batches)
        for batch in batches:
            batch = dict(batch, pixel_values=batch["pixel_values"].double())
            trainer.training_step(model, batch, num_items)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}

    accumulated, single = gradients(small), gradients(large)
    assert accumulated.keys() == single.keys() and len(single) > 10
    for name in single:
        torch.testing.assert_close(accumulated[name], single[name], rtol=1e-8, atol=1e-12, msg=name)


# ---- training ----


class _FirstStepRecorder:
    """Callback recording parameters and gradients around the first optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Recorder(TrainerCallback):
            before, grads, after = {}, {}, {}

            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                if state.global_step == 0:
                    for n, p in model.named_parameters():
                        if p.requires_grad and p.grad is not None:
                            self.before[n], self.grads[n] = p.detach().clone(), p.grad.detach().clone()

            def on_optimizer_step(self, args, state, control, model=None, **kwargs):
                if state.global_step == 0:
                    self.after = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.before}

        return Recorder()


def test_three_step_training_logs_metrics_and_applies_three_learning_rates(tiny_tokenizer, processor, tmp_path):
    """3 steps (crossing into epoch 1) log loss / loss_answer / loss_question; each component moves at its lr."""
    from recipes.data import ConversationDataset

    model = lora_model(tiny_tokenizer)
    rates = {"llm": 1e-3, "projector": 3e-4, "vision": 5e-3}
    dataset = ConversationDataset([make_record(i) for i in range(4)])  # 4 turns each: every step has questions
    trainer = make_trainer(
        model, processor, tmp_path, dataset=dataset, sq_ratio=1.0, learning_rate=rates["llm"],
        projector_lr=rates["projector"], vision_lr=rates["vision"], weight_decay=0.0,
    )
    recorder = _FirstStepRecorder()
    trainer.add_callback(recorder)
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        assert {"loss", "loss_answer", "loss_question", "question_token_fraction"} <= entry.keys()
        assert math.isfinite(entry["loss"]) and 0.0 < entry["question_token_fraction"] < 1.0
    assert trainer.data_collator.epoch == 1  # 4 samples / batch 2: the third step is in epoch 1

    # AdamW's first step moves every element with a gradient far above eps by exactly lr.
    moved = {}
    for name, grad in recorder.grads.items():
        strong = grad.abs() > 1e-5
        if strong.any():
            delta = (recorder.after[name] - recorder.before[name]).abs()[strong]
            moved.setdefault(parameter_component(name), []).append(delta / rates[parameter_component(name)])
    assert set(moved) == {"llm", "projector", "vision"}
    for component, ratios in moved.items():
        ratios = torch.cat([r.flatten() for r in ratios])
        torch.testing.assert_close(ratios, torch.ones_like(ratios), rtol=0, atol=1e-2, msg=component)

    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert {g["lr"] for g in groups.values()} == set(rates.values())
    metrics = trainer.evaluate(ConversationDataset(records(2)))
    assert {"eval_loss", "eval_loss_answer", "eval_loss_question"} <= metrics.keys()


def test_weight_decay_follows_transformers_decay_names(tiny_tokenizer, processor, tmp_path):
    model = lora_model(tiny_tokenizer)
    trainer = make_trainer(model, processor, tmp_path, weight_decay=0.05, projector_lr=1e-4, vision_lr=2e-4)
    optimizer = trainer.create_optimizer()
    decay = set(trainer.get_decay_parameter_names(model))
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(group_of) == len(trainable)
    expected_lr = {"llm": 1e-3, "projector": 1e-4, "vision": 2e-4}
    for name, parameter in trainable:
        group = group_of[id(parameter)]
        assert group["lr"] == expected_lr[parameter_component(name)], name
        assert group["weight_decay"] == (0.05 if name in decay else 0.0), name
    assert all(g["params"] for g in optimizer.param_groups)


@pytest.mark.parametrize("mode", ["error", "warn"])
def test_audit_catches_a_trainable_parameter_outside_the_graph(tiny_tokenizer, processor, tmp_path, mode, caplog):
    model = lora_model(tiny_tokenizer)
    projector = model.base_model.model.model.multi_modal_projector
    projector.register_parameter("forgotten_scale", torch.nn.Parameter(torch.ones(4)))
    trainer = make_trainer(model, processor, tmp_path, max_steps=1, audit_trainable=mode)
    if mode == "error":
        with pytest.raises(RuntimeError, match="forgotten_scale"):
            trainer.train()
    else:
        with caplog.at_level("WARNING"):
            trainer.train()
        assert "forgotten_scale" in caplog.text
        assert trainer.state.global_step == 1


def test_trainer_builds_collator_and_groups_by_modality_length(tiny_tokenizer, processor, tmp_path):
    from recipes.data import ConversationDataset, ModalityLengthGroupedSampler, SkipStats
    from recipes.trainer import SQLlavaTrainer

    stats = SkipStats()
    trainer = SQLlavaTrainer(
        model=lora_model(tiny_tokenizer),
        args=make_args(tmp_path, stage="pretrain", max_length=512, seed=3),
        train_dataset=ConversationDataset(records()),
        processing_class=processor,
        skip_stats=stats,
        group_by_modality_length=True,
    )
    collator = trainer.data_collator
    assert isinstance(collator, SelfQuestioningCollator)
    assert (collator.mode, collator.max_length, collator.seed, collator.pad_to_multiple_of) == ("pretrain", 512, 3, 8)
    # The run's report starts from the load-time counts; the collator reports its drops in each batch.
    assert trainer.skip_stats is stats and trainer.skip_report.load is stats and collator.report_skips
    assert isinstance(trainer._get_train_sampler(), ModalityLengthGroupedSampler)
    assert isinstance(trainer.train_dataset, ConversationDataset)


def test_datasets_dataset_with_a_missing_image_trains_and_reports_the_skip(tiny_tokenizer, processor, tmp_path):
    """A `datasets.Dataset` (TRL's own type) of records with image paths trains; a missing image is skipped, counted
    and written to `<output_dir>/skipped_samples.json` at the end of training. One sample in three is over the default
    max_skip_fraction (1%): the run fails, naming the reason and the count, unless the limit is raised."""
    import datasets

    path = tmp_path / "img.png"
    Image.new("RGB", (30, 20), (0, 200, 0)).save(path)
    rows = [dict(make_record(i, turns=CONVERSATION[:2]), images=[str(path)]) for i in range(2)]
    rows.append(dict(make_record(2, turns=CONVERSATION[:2], sample_id="gone"), images=[str(tmp_path / "gone.png")]))
    dataset = datasets.Dataset.from_list(rows)
    trainer = make_trainer(lora_model(tiny_tokenizer), processor, tmp_path / "strict", dataset=dataset, max_steps=1,
                           per_device_train_batch_size=3)
    with pytest.raises(ValueError, match=r"33.33% of the training samples were dropped .*max_skip_fraction=0.01.*"
                                         r"1 of 3 samples \(unreadable_image: 1 \(e.g. gone; gone: .*gone.png"):
        trainer.train()
    trainer = make_trainer(lora_model(tiny_tokenizer), processor, tmp_path, dataset=dataset, max_steps=1,
                           per_device_train_batch_size=3, max_skip_fraction=0.5)
    trainer.train()
    assert trainer.state.global_step == 1
    report = json.loads((tmp_path / "skipped_samples.json").read_text())
    assert report["counts"] == {"unreadable_image": 1} and report["examples"]["unreadable_image"] == ["gone"]
    assert report["collate"]["seen"] == 3 and report["fraction"] == pytest.approx(1 / 3)


def test_epoch_callback_sets_the_collator_epoch_on_start_and_resume(tiny_tokenizer, processor, tmp_path):
    """The collator's epoch follows `state.epoch` at each epoch start, including a resume mid-epoch (1.5 -> 1)."""
    trainer = make_trainer(lora_model(tiny_tokenizer), processor, tmp_path)
    for state_epoch, expected in [(None, 0), (0.0, 0), (1.0, 1), (1.5, 1), (2.0, 2)]:
        trainer.state.epoch = state_epoch
        trainer.callback_handler.on_epoch_begin(trainer.args, trainer.state, trainer.control)
        assert trainer.data_collator.epoch == expected


# ---- the run's skip report ----


def test_skip_report_counts_every_drop_with_dataloader_workers(tiny_tokenizer, processor, tmp_path, caplog):
    """Dropped in dataloader worker processes, the samples still reach `skipped_samples.json` and the final log: the
    report travels in the batches (before, workers kept their counts: 0 reported here)."""
    from recipes.data import ConversationDataset

    good, corrupt = tmp_path / "good.png", tmp_path / "corrupt.png"
    Image.new("RGB", (30, 20), (0, 0, 200)).save(good)
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows = [make_record(i, turns=CONVERSATION[:2], images=[str(corrupt if i % 4 == 3 else good)],
                        sample_id=f"s{i}") for i in range(16)]  # fmt: skip
    trainer = make_trainer(lora_model(tiny_tokenizer), processor, tmp_path, dataset=ConversationDataset(rows),
                           max_steps=4, per_device_train_batch_size=4, dataloader_num_workers=2,
                           max_skip_fraction=1.0)  # fmt: skip
    with caplog.at_level("WARNING", logger="recipes.skip_report"):
        trainer.train()
    report = json.loads((tmp_path / "skipped_samples.json").read_text())
    assert report["counts"] == {"unreadable_image": 4}
    assert sorted(report["examples"]["unreadable_image"]) == ["s11", "s15", "s3", "s7"]
    assert report["collate"]["seen"] == 16 and report["fraction"] == pytest.approx(0.25)
    assert "Training run: skipped 4 of 16 samples: unreadable_image: 4" in caplog.text
    assert trainer.skip_stats.total == 4  # the complete report is merged into the stats the trainer was given


def test_a_run_that_drops_every_sample_fails_naming_why(tiny_tokenizer, processor, tmp_path):
    """`max_length` below the image position drops every sample: the first step trains on no labelled token. It
    fails with the skip reason, even with the audit set to warn (before, it trained on nothing and exited 0)."""
    trainer = make_trainer(lora_model(tiny_tokenizer), processor, tmp_path, max_length=8, audit_trainable="warn",
                           max_skip_fraction=1.0)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"step\(s\) \[1\] trained on no labelled token.*image_tokens_truncated: 2"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_max_skip_fraction_fails_before_training_on_load_time_drops(tiny_tokenizer, processor, tmp_path):
    from recipes.data import SkipStats

    stats = SkipStats()
    stats.seen = 10
    stats.add("missing_image", "a", detail="image file 'a.png' not found")
    stats.add("missing_image", "b")
    trainer = make_trainer(lora_model(tiny_tokenizer), processor, tmp_path, max_skip_fraction=0.1)
    trainer.skip_report.load = stats
    with pytest.raises(ValueError, match=r"20.00% .* while loading the data, over max_skip_fraction=0.1.*"
                                         r"2 of 10 records \(missing_image: 2 \(e.g. a, b; a: image file"):
        trainer.train()
    assert trainer.state.global_step == 0
    with pytest.raises(ValueError, match="max_skip_fraction"):
        make_args(tmp_path, max_skip_fraction=1.5)
