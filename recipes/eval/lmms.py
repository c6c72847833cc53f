"""The lmms-eval model `sqllava`: report an SQ-LLaVA folder or Hub repo on lmms-eval's benchmarks.

lmms-eval (0.7.3) finds the model through the `lmms_eval.models` entry point of this distribution, which the
optional extra installs:

    pip install -e ".[lmms]"
    lmms-eval --model sqllava --model_args pretrained=you/sqllava-7b \\
        --tasks vqav2_val,gqa,pope,scienceqa_img,textvqa_val,mmbench_en_dev --batch_size 8 \\
        --output_path outputs/lmms-eval --log_samples
    accelerate launch --num_processes 8 -m lmms_eval --model sqllava --model_args pretrained=you/sqllava-7b ...

Every request is one single-turn conversation rendered with the model's own chat template (LLaVA-1.5's Vicuna v1,
`conv_vicuna_v1`, which SQ-LLaVA's evaluation scripts use): `SYSTEM USER: <image>\\n{task prompt} ASSISTANT:`, the
task's pre/post prompts included (e.g. "Answer the question using a single word or phrase."). Answers are decoded
with greedy search unless the task asks to sample, cut at the task's `until` strings and cleaned with
`processor.post_process_generation`. Multiple-choice tasks (`output_type: multiple_choice`) are scored with
[`SQLlavaLmmsEvalModel.loglikelihood`]: the summed log-probability of each choice after `ASSISTANT:` (returned
negated, as lmms-eval's multiple-choice scoring expects).

Model arguments (`--model_args key=value,...`): `pretrained` (folder or Hub id, required), `revision`, `dtype`
(`auto`, `bfloat16`, `float16`, `float32`), `device`, `attn_implementation`, `trust_remote_code` (off: a folder
shipping code other than the installed sqllava's is refused, see recipes/loading.py), `system_prompt` (text or a
file; default: the chat template's LLaVA system prompt), `use_cache`. `--batch_size N` batches requests.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

logger = logging.getLogger(__name__)

MODEL_ID = "sqllava"
# lmms-eval's own models generate up to 1,024 new tokens when a task does not say.
DEFAULT_MAX_NEW_TOKENS = 1024
# Generation settings lmms-eval tasks pass for other model families; they have no meaning here and are dropped
# (with a warning), as lmms-eval's LLaVA models drop them.
_FOREIGN_GENERATION_KWARGS = ("image_aspect_ratio", "image_sizes", "modalities")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tiff", ".webp")


def lmms_eval_models() -> list:
    """The entry point lmms-eval's model registry loads (group `lmms_eval.models`, see pyproject.toml)."""
    # Imported here, not at the top: `lmms_eval.models` loads the entry points while it initializes, so a
    # top-level import would import this module half-way through that (and the registry would miss `sqllava`
    # whenever this module is imported first).
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.SQLlavaLmmsEvalModel")]


class SQLlavaLmmsEvalModel(lmms):
    """SQ-LLaVA for lmms-eval: batched generation and log-likelihood scoring with the model's chat template.

    A "simple" lmms-eval model: requests carry the task's text context and a `doc_to_visual` function, so both
    generation tasks and multiple-choice (log-likelihood) tasks run. Under `accelerate launch` every process holds a
    copy of the model on its own GPU and lmms-eval splits the requests between them.

    Args:
        pretrained: the model folder or Hub id.
        revision: Hub revision (branch, tag or commit).
        dtype: `"auto"` (the checkpoint's), `"bfloat16"`, `"float16"` or `"float32"`.
        device: e.g. `"cuda"`, `"cuda:1"`, `"cpu"`; defaults to CUDA when available. Ignored under multi-process
            `accelerate launch` (each process uses its own GPU).
        batch_size: requests per forward pass (lmms-eval's `--batch_size`).
        trust_remote_code: allow the folder's own Python files to run; not needed for folders exported by sqllava.
        attn_implementation: `"sdpa"`, `"eager"`, `"flash_attention_2"`, ...; the model's default when None.
        system_prompt: replaces the chat template's system prompt (text, or the path of a file holding it).
        use_cache: use the KV cache while generating.
        max_batch_size: accepted for lmms-eval's CLI (used with `--batch_size auto`, which is not supported).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        revision: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int | str = 1,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        system_prompt: str | None = None,
        use_cache: bool = True,
        max_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(
                f"--model_args has unknown argument(s) {sorted(kwargs)} for the sqllava model; it takes pretrained, "
                "revision, dtype, device, trust_remote_code, attn_implementation, system_prompt and use_cache."
            )
        if not pretrained:
            raise ValueError("The sqllava model needs `pretrained`: --model_args pretrained=FOLDER_OR_HUB_ID.")
        if trust_remote_code not in (True, False, 0, 1):
            raise TypeError(f"trust_remote_code={trust_remote_code!r} must be true or false.")
        self.batch_size_per_device = _parse_batch_size(batch_size)
        self.use_cache = bool(use_cache)
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None

        from accelerate import Accelerator

        from recipes.loading import load_model_and_processor

        # The evaluator gathers request counts and waits on this accelerator when several processes run.
        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:
            self._device = self.accelerator.device
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.pretrained = str(pretrained)
        self._model, self.processor = load_model_and_processor(
            self.pretrained,
            trust_remote_code=bool(trust_remote_code),
            dtype=str(dtype),
            device=str(self._device),
            attn_implementation=attn_implementation,
            revision=None if revision is None else str(revision),
        )
        self.tokenizer = self.processor.tokenizer
        self.image_token = getattr(self.processor, "image_token", "<image>")
        self._warned_kwargs: set[str] = set()

    # ------------------------------------------------------------------------------------ lmms-eval's interface
    @property
    def model(self):
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_device

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answer each request: `args = (context, generation_kwargs, doc_to_visual, doc_id, task, split)`.

        Requests with the same generation settings are batched, longest context first so that a batch holds prompts
        of similar length; a batch may mix requests with and without images. Images are read one batch at a time.
        Answers come back in the order of `requests`.
        """
        args = [request.args for request in requests]
        answers: list[str | None] = [None] * len(args)

        def group_key(i: int) -> str:
            return json.dumps(args[i][1] or {}, sort_keys=True, default=str)

        batches = list(_ordered_batches(len(args), group_key, lambda i: -len(args[i][0]), self.batch_size))
        for batch in tqdm(batches, disable=self.rank != 0, desc="sqllava generate_until"):
            gen_kwargs = args[batch[0]][1] or {}
            prompts, images = [], []
            for i in batch:
                context, _, doc_to_visual, doc_id, task, split = args[i]
                request_images = self._visuals(doc_to_visual, doc_id, task, split)
                prompts.append(self.build_prompt(context, len(request_images)))
                images.extend(request_images)
            for i, text in zip(batch, self._generate(prompts, images, gen_kwargs)):
                answers[i] = text
                self.cache_hook.add_partial("generate_until", (args[i][0], gen_kwargs), text)
        return answers

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Multi-round tasks: `args = (context, generation_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)`.

        Round 0 answers the context; afterwards `doc_to_text(doc, previous_output=..., round_idx=r,
        previous_round_info=...)` gives `(visuals, text, terminal, round_outputs, round_info)` for the next round,
        as lmms-eval's multi-round tasks define it, until it says `terminal`. Each round is a fresh single-turn
        prompt (the task folds earlier rounds into its text). Returns every round's answer for each request.
        """
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="sqllava generate_until_multi_round"):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            images = self._visuals(doc_to_visual, doc_id, task, split)
            outputs = [self._generate([self.build_prompt(context, len(images))], images, gen_kwargs or {})[0]]
            round_info = None
            for round_idx in itertools.count(1):
                step = doc_to_text(
                    doc, previous_output=list(outputs), round_idx=round_idx, previous_round_info=round_info
                )
                if not (isinstance(step, tuple) and len(step) == 5):
                    raise TypeError(
                        f"Task {task!r}: doc_to_text(round_idx={round_idx}) returned {type(step).__name__}; multi-round "
                        "tasks return (visuals, text, terminal, round_outputs, round_info)."
                    )
                visuals, text, terminal, round_outputs, round_info = step
                if round_outputs is not None:
                    outputs = list(round_outputs)
                if terminal:
                    break
                images = self._check_images(visuals, task)
                outputs.append(self._generate([self.build_prompt(text, len(images))], images, gen_kwargs or {})[0])
            results.append(outputs)
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """`(-log P(continuation | context), continuation is the greedy one)` for each request, wrapped.

        `args = (context, continuation_or_doc_to_target, doc_to_visual, doc_id, task, split)`; the context is the
        chat prompt of the task's text (ending with `ASSISTANT:`), the continuation follows it directly (for
        multiple-choice tasks it is `" " + choice`). `args = ("", continuation)` (lmms-eval's unconditional
        requests for `acc_mutual_info`) scores the continuation right after BOS. The log-probability is the sum over
        the continuation's tokens of the model's log-softmax, computed in float32.

        Two conventions of lmms-eval 0.7.3 shape what is returned:
        - the score is the *negative* log-likelihood (summed over the continuation's tokens): lmms-eval's
          multiple-choice scoring picks `argmin` of the scores ("since we return the actual loss in many model
          loglikelihood", api/task.py), so `acc` is the most likely choice and `acc_norm` the most likely per
          character, as in lm-evaluation-harness. (Its `perplexity` aggregation and `acc_mutual_info` still expect
          log-likelihoods, for every lmms-eval model alike.)
        - each pair comes back as `GenerationResult(text=(nll, is_greedy))`: the evaluator passes every model output
          through `unwrap_generation_output`, which turns a bare tuple into its `str()` (multiple-choice tasks then
          fail with "too many values to unpack") but hands a `GenerationResult`'s `.text` on untouched.
        """
        args = [request.args for request in requests]
        scores: list[tuple[float, bool] | None] = [None] * len(args)
        # Longest requests first, so that a batch holds sequences of similar length.
        batches = _ordered_batches(
            len(args), lambda i: 0, lambda i: -len(args[i][0]) - len(str(args[i][1])), self.batch_size
        )
        for batch in tqdm(list(batches), disable=self.rank != 0, desc="sqllava loglikelihood"):
            items = [self._loglikelihood_item(args[i]) for i in batch]
            for i, item, (log_likelihood, greedy) in zip(batch, items, self._score(items)):
                scores[i] = (-log_likelihood, greedy)
                self.cache_hook.add_partial("loglikelihood", (args[i][0], item[1]), scores[i])
        return [GenerationResult(text=score) for score in scores]

    def _loglikelihood_item(self, args: tuple) -> tuple[str, str, list]:
        """`(prompt, continuation, images)` of one loglikelihood request."""
        if len(args) == 2:
            context, continuation = args
            images: list = []
        else:
            context, continuation, doc_to_visual, doc_id, task, split = args
            images = self._visuals(doc_to_visual, doc_id, task, split)
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
        if not isinstance(continuation, str):
            raise TypeError(
                f"loglikelihood needs a text continuation, got {type(continuation).__name__} {continuation!r}: "
                "make the task's doc_to_target return a string."
            )
        prompt = self.build_prompt(context, len(images)) if context or images else ""
        return prompt, continuation, images

    # ----------------------------------------------------------------------------------------------- internals
    def build_prompt(self, context: str, num_images: int) -> str:
        """The chat prompt of one user turn holding `context` and `num_images` images, ending with `ASSISTANT:`.

        Images go before the text (`<image>\\n` + text, as LLaVA's evaluation does), unless the task's context
        already places `<image>` itself.
        """
        if num_images and self.image_token not in context:
            content: Any = [{"type": "image"}] * num_images + [{"type": "text", "text": context}]
        else:
            content = context
        messages = [{"role": "user", "content": content}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _visuals(self, doc_to_visual: Callable | None, doc_id: int, task: str, split: str) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return self._check_images(visuals, task)

    @staticmethod
    def _check_images(visuals: Any, task: str) -> list:
        if visuals is None:
            return []
        visuals = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
        for visual in visuals:
            is_image_path = isinstance(visual, str) and visual.lower().endswith(_IMAGE_EXTENSIONS)
            if not (is_image_path or hasattr(visual, "convert")):
                raise ValueError(
                    f"Task {task!r} gives a {type(visual).__name__} input ({str(visual)[:80]!r}); SQ-LLaVA takes "
                    "images only (PIL images or image files), not video or audio."
                )
        return visuals

    def _inputs(self, prompts: Sequence[str], images: list, padding_side: str):
        kwargs: dict[str, Any] = {"text": list(prompts), "return_tensors": "pt", "padding": True}
        kwargs["padding_side"] = padding_side
        if images:
            kwargs["images"] = images
        inputs = self.processor(**kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def generation_settings(self, gen_kwargs: dict) -> tuple[dict[str, Any], list[str]]:
        """`(model.generate keyword arguments, stop strings)` for a task's `generation_kwargs`.

        As lmms-eval's LLaVA models read them: `temperature` > 0 samples at that temperature (with `top_p`), a
        temperature of 0 is greedy whatever `do_sample` says, and without a temperature `do_sample: true` samples at
        temperature 1; `num_beams` and `max_new_tokens` (default 1,024) pass through; `until` (a string or a list)
        cuts the answer before the first stop string.
        """
        settings = dict(gen_kwargs)
        until = settings.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not isinstance(until, (list, tuple)) or not all(isinstance(stop, str) for stop in until):
            raise TypeError(f"generation_kwargs['until'] must be a string or a list of strings, got {until!r}.")
        max_new_tokens = int(settings.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        num_beams = int(settings.pop("num_beams", 1) or 1)
        top_p = settings.pop("top_p", None)
        do_sample = bool(settings.pop("do_sample", False))
        temperature = settings.pop("temperature", None)
        if temperature is not None:
            do_sample = float(temperature) > 0
        generate_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}
        if do_sample:
            generate_kwargs.update(do_sample=True, temperature=float(temperature) if temperature else 1.0)
            if top_p is not None:
                generate_kwargs["top_p"] = float(top_p)
        else:
            generate_kwargs["do_sample"] = False
        unknown = sorted(set(settings) - self._warned_kwargs)
        if unknown:
            self._warned_kwargs.update(unknown)
            known = [key for key in unknown if key in _FOREIGN_GENERATION_KWARGS]
            logger.warning(
                "sqllava ignores the generation setting(s) %s%s.",
                unknown,
                f" ({known} only apply to other model families)" if known else "",
            )
        return generate_kwargs, [stop for stop in until if stop]

    def _generate(self, prompts: Sequence[str], images: list, gen_kwargs: dict) -> list[str]:
        generate_kwargs, until = self.generation_settings(gen_kwargs)
        # Left padding: every prompt of the batch ends where generation starts.
        inputs = self._inputs(prompts, images, padding_side="left")
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                **generate_kwargs,
                use_cache=self.use_cache,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        texts = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=False)
        answers = []
        for text in texts:
            for stop in until:
                text = text.split(stop, 1)[0]
            answers.append(self.processor.post_process_generation(text))
        return answers

    def _score(self, items: Sequence[tuple[str, str, list]]) -> list[tuple[float, bool]]:
        images = [image for _, _, item_images in items for image in item_images]
        full = self._inputs([prompt + continuation for prompt, continuation, _ in items], images, "right")
        # The prompt alone, tokenized the same way: the continuation is what follows the longest common prefix
        # (tokens never merge across `ASSISTANT:` and the space that starts a choice, but a continuation that
        # does not start with a space may re-tokenize the prompt's end; those tokens are then scored too).
        prompts = [prompt for prompt, _, _ in items]
        prompt_ids = self.processor(text=prompts, images=images or None, padding=False)["input_ids"]
        with torch.inference_mode():
            logits = self.model(
                input_ids=full["input_ids"],
                attention_mask=full["attention_mask"],
                pixel_values=full.get("pixel_values"),
            ).logits
        scores = []
        for row, (prompt_row, (prompt, continuation, _)) in enumerate(zip(prompt_ids, items)):
            length = int(full["attention_mask"][row].sum())
            ids = full["input_ids"][row, :length]
            start = _common_prefix_length(ids.tolist(), list(prompt_row))
            if start == length:
                raise ValueError(f"The continuation {continuation!r} adds no token to the prompt {prompt[-80:]!r}.")
            start = max(start, 1)  # the first token (BOS) has no prediction
            targets = ids[start:length]
            log_probs = torch.log_softmax(logits[row, start - 1 : length - 1].float(), dim=-1)
            total = log_probs.gather(-1, targets[:, None]).sum().item()
            greedy = bool((log_probs.argmax(-1) == targets).all())
            scores.append((total, greedy))
        return scores


def _parse_batch_size(batch_size: int | str) -> int:
    try:
        value = int(batch_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"--batch_size {batch_size!r} is not supported by the sqllava model; pass a number, e.g. --batch_size 8."
        ) from None
    if value < 1:
        raise ValueError(f"--batch_size must be at least 1, got {value}.")
    return value


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ordered_batches(
    count: int, group_key: Callable[[int], Any], sort_key: Callable[[int], Any], batch_size: int
) -> Iterator[list[int]]:
    """Indices `0..count-1` in batches of at most `batch_size`: one group per `group_key`, in `sort_key` order."""
    groups: dict[Any, list[int]] = {}
    for index in range(count):
        groups.setdefault(group_key(index), []).append(index)
    for indices in groups.values():
        indices.sort(key=sort_key)
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


__all__ = ["MODEL_ID", "SQLlavaLmmsEvalModel", "lmms_eval_models"]
