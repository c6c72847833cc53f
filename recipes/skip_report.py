"""One complete report of the samples a training run dropped, whatever the number of dataloader workers and ranks.

Samples are dropped in two places: at load (`recipes.data`: identical on every rank, counted once) and at collate
time (`recipes.collator`: truncation, unreadable images, ...), which runs inside dataloader worker processes whose
counters never reach the trainer. So the collator puts what it dropped into the batch itself (`skip_report`), the
trainer adds it up on each rank as batches arrive, the ranks' counts are gathered at each checkpoint and at the end,
and a resumed run starts from the counts its checkpoint stored. The result goes to `<output_dir>/skipped_samples.json`
and the final log.

A run fails, with the reasons and counts in the message, when:

- it drops more than `max_skip_fraction` of its samples (checked before the first step on the load-time drops, at
  every log on the drops so far against the whole run's samples, which only fails when the end result cannot be
  under the limit any more, and at the end on the complete report);
- an optimizer step trains on no labelled token at all, on any rank (checked at the first step and at every log).

The dropped fraction combines both places as independent filters: `1 - (1 - load_dropped / records) *
(1 - collate_dropped / collated)`, which for one epoch is `(load + collate drops) / records` and does not grow with
the number of epochs a dropped sample is seen in.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import TrainerCallback

from recipes.checkpoints import SKIPS_NAME, write_json_durably
from recipes.data import SkipStats

logger = logging.getLogger(__name__)


def dropped_fraction(load: SkipStats, collate: SkipStats, collated: int | None = None) -> float:
    """The run's share of dropped samples; `collated` overrides `collate.seen` (e.g. the whole run's count)."""
    seen = collate.seen if collated is None else collated
    load_fraction = load.total / load.seen if load.seen else 0.0
    collate_fraction = collate.total / seen if seen else 0.0
    return 1.0 - (1.0 - load_fraction) * (1.0 - collate_fraction)


def report_dict(load: SkipStats, collate: SkipStats, max_skip_fraction: float | None = None) -> dict[str, Any]:
    """`skipped_samples.json`: the merged counts by reason at the top (`total`, `counts`, `examples`, `details`),
    the dropped `fraction`, and each place's own counts under `load` and `collate`."""
    merged = (load + collate).as_dict()
    merged.pop("seen")
    return {
        **merged,
        "fraction": dropped_fraction(load, collate),
        "max_skip_fraction": max_skip_fraction,
        "load": load.as_dict(),
        "collate": collate.as_dict(),
    }


def failure_message(load: SkipStats, collate: SkipStats, fraction: float, limit: float, where: str) -> str:
    parts = [
        f"{fraction:.2%} of the training samples were dropped{where}, over max_skip_fraction={limit:g}.",
        (f"At load: {load.total} of {load.seen} records" + (f" ({load.summary()})." if load.total else "."))
        if load.seen
        else "",
        f"At collate time: {collate.total} of {collate.seen} samples"
        + (f" ({collate.summary()})." if collate.total else "."),
        (
            "Fix the data or the setting a reason points at (e.g. a larger --max_length for image_tokens_truncated, "
            "the image folder for missing_image), or accept the loss with a larger --max_skip_fraction."
        ),
    ]
    return " ".join(part for part in parts if part)


class RunSkipReport:
    """The run's skip counts: load-time (the same on every rank), restored from a checkpoint, and this rank's own.

    Args:
        load_stats: the `SkipStats` of loading the training data (`recipes.data`); its `seen` is the record count.
        max_skip_fraction: the run fails above this share of dropped samples (`None`: never).
    """

    def __init__(self, load_stats: SkipStats | None, max_skip_fraction: float | None):
        self.load = load_stats if load_stats is not None else SkipStats()
        self.max_skip_fraction = max_skip_fraction
        self.restored = SkipStats()  # collate-time counts of the run before a resume (all ranks, counted once)
        self.local = SkipStats()  # collate-time counts of this rank since the (re)start

    def add_batch(self, report: dict[str, Any]) -> None:
        """Add a collator `skip_report` (`{"seen": int, "skipped": [(reason, sample_id, detail), ...]}`)."""
        self.local.seen += int(report.get("seen", 0))
        for reason, sample_id, detail in report.get("skipped", ()):
            self.local.add(reason, sample_id, detail=detail)

    def restore(self, payload: dict[str, Any] | None) -> None:
        """Start from the collate-time counts stored in a checkpoint's `skipped_samples.json`."""
        self.restored = SkipStats.from_dict((payload or {}).get("collate", {}))

    def gather_collate(self, accelerator) -> SkipStats:
        """Every rank's collate-time counts plus the restored ones. A collective: every rank must call it."""
        parts = [self.local]
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = [SkipStats.from_dict(p) for p in gather_object([self.local.as_dict()])]
        total = SkipStats().merge(self.restored)
        for part in parts:
            total.merge(part)
        return total


class SkipReportCallback(TrainerCallback):
    """Collects and checks the run's skip report for `SQLlavaTrainer` (see the module docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.first_step_checked = False

    # ---- checks ----

    def on_train_begin(self, args, state, control, **kwargs):
        report = self.trainer.skip_report
        limit = report.max_skip_fraction
        fraction = dropped_fraction(report.load, SkipStats())
        if limit is not None and report.load.seen and fraction > limit:
            raise ValueError(failure_message(report.load, SkipStats(), fraction, limit, " while loading the data"))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        # The first step is checked at once (before the trainability audit, which would otherwise blame the
        # parameters); later steps at each log, where the ranks synchronise anyway.
        if self.first_step_checked:
            return
        self.first_step_checked = True
        device = self.trainer.accelerator.device
        tokens = self.trainer._sq_micro_tokens
        if tokens is None:  # no batch with labels yet: a zero made on the device, not copied to it
            tokens = torch.zeros((), dtype=torch.long, device=device)
        tokens = tokens.detach().to(device, torch.long)
        if self.trainer.accelerator.num_processes > 1:
            tokens = self.trainer.accelerator.reduce(tokens, reduction="sum")
        if int(tokens) == 0:
            self._fail_no_labels([state.global_step + 1])

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        tokens = trainer._sq_micro_tokens
        if tokens is None:  # no batch with labels yet: a zero made on the device
            tokens = trainer._sq_micro_tokens = torch.zeros((), dtype=torch.long, device=trainer.accelerator.device)
        trainer._sq_step_tokens.append((state.global_step, tokens.detach().clone()))
        tokens.zero_()  # in place, on its device: the next step adds to it without a host-to-device copy

    def on_log(self, args, state, control, logs=None, **kwargs):
        trainer = self.trainer
        steps, trainer._sq_step_tokens = trainer._sq_step_tokens, []
        accelerator = trainer.accelerator
        report = trainer.skip_report
        # One reduction for the steps since the last log and this rank's collate counts (seen, dropped).
        device = accelerator.device
        counts = torch.tensor([report.local.seen, report.local.total], dtype=torch.long, device=device)
        numbers = torch.cat([torch.stack([t.to(device, torch.long) for _, t in steps]), counts]) if steps else counts
        if accelerator.num_processes > 1:
            numbers = accelerator.reduce(numbers, reduction="sum")
        numbers = numbers.tolist()  # the one synchronisation of this log
        empty = [step for (step, _), tokens in zip(steps, numbers) if tokens == 0]
        if empty:
            self._fail_no_labels(empty)
        limit = report.max_skip_fraction
        if limit is None:
            return
        seen, dropped = numbers[-2] + report.restored.seen, numbers[-1] + report.restored.total
        # The drops so far against every sample the whole run will collate: above the limit, the end result can
        # no longer be under it, so stop now rather than after the last step.
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        whole_run = max(seen, state.max_steps * per_step)
        so_far = SkipStats()
        so_far.counts["dropped"], so_far.seen = int(dropped), int(seen)
        if dropped_fraction(report.load, so_far, collated=whole_run) > limit:
            collate = report.gather_collate(accelerator)
            where = f" by step {state.global_step} (already more than the limit allows for the whole run)"
            raise ValueError(
                failure_message(report.load, collate, dropped_fraction(report.load, collate), limit, where)
            )

    def on_train_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        report = trainer.skip_report
        collate = report.gather_collate(trainer.accelerator)
        payload = report_dict(report.load, collate, report.max_skip_fraction)
        trainer.final_skip_report = payload
        if args.should_save:
            os.makedirs(args.output_dir, exist_ok=True)
            write_json_durably(os.path.join(args.output_dir, SKIPS_NAME), payload)
        (report.load + collate).log(logger, prefix="Training run: ")
        limit = report.max_skip_fraction
        if limit is not None and payload["fraction"] > limit:
            raise ValueError(
                failure_message(report.load, collate, payload["fraction"], limit, "")
                + f" The complete report is in {os.path.join(args.output_dir, SKIPS_NAME)}."
            )

    def _fail_no_labels(self, steps: list[int]) -> None:
        report = self.trainer.skip_report
        collate = report.gather_collate(self.trainer.accelerator)
        dropped = (report.load + collate).summary() or "no sample was reported dropped"
        raise RuntimeError(
            f"Optimizer step(s) {steps[:10]} trained on no labelled token at all: on every rank, every sample of the "
            f"step was dropped or kept no trained token, so the step learns nothing. Dropped so far: {dropped}. Fix "
            "the data or the settings these reasons point at (e.g. a larger --max_length)."
        )
