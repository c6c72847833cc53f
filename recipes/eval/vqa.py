"""VQAv2, VizWiz and TextVQA: open short answers scored against ten human answers.

Files under the evaluation root, as LLaVA's docs/Evaluation.md lays them out:

- VQAv2 (`vqav2/`): `llava_vqav2_mscoco_test-dev2015.jsonl` + images `test2015/` (answered for the EvalAI server;
  `submit` writes the upload file over every question of `llava_vqav2_mscoco_test2015.jsonl`, as LLaVA's
  `scripts/convert_vqav2_for_submission.py` does). `--split val` asks the official val questions
  (`v2_OpenEnded_mscoco_val2014_questions.json`, images `val2014/`) with LLaVA's short-answer suffix and scores them
  locally against `v2_mscoco_val2014_annotations.json`.
- VizWiz (`vizwiz/`): `llava_test.jsonl` + images `test/` (answered for the server: `submit` writes the upload file
  as `scripts/convert_vizwiz_for_submission.py` does). `--split val` asks the questions of `val.json` (the VizWiz
  annotation format, images `val/`) with the suffix of `llava_test.jsonl` and scores them locally.
- TextVQA (`textvqa/`): `llava_textvqa_val_v051_ocr.jsonl` + images `train_images/`, scored against
  `TextVQA_0.5.1_val.json`. LLaVA's `question_id` there is the image id (several questions share it), so questions
  are matched as `llava/eval/eval_textvqa.py` matches them: by image id and the question text of the prompt.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping
from typing import Any

from recipes.eval.common import (
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    Question,
    ScoreResult,
    compute_metric,
    metric_module,
    predictions_and_missing,
    question_key,
    read_json,
    read_jsonl,
    register,
    require_fields,
    require_str,
    write_json,
)

# The instruction of LLaVA's vizwiz/llava_test.jsonl (LLaVA-1.5 paper, Table 7: "When the provided information is
# insufficient, respond with 'Unanswerable'."), used for the val questions built from val.json.
VIZWIZ_SUFFIX = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER_SUFFIX


def llava_question_file(path: str, what: str, image_required: bool = True) -> list[Question]:
    """Questions of a `model_vqa_loader.py` question file (`question_id`, `image`, `text` per line).

    The model sees `"<image>\\n" + text` and the answer row's `prompt` is `text`, as in `model_vqa_loader.py`.
    """
    questions = []
    for number, row in read_jsonl(path, what):
        where = f"{path}:{number}"
        require_fields(row, ("question_id", "text") + (("image",) if image_required else ()), where)
        text = require_str(row["text"], "text", where)
        image = require_str(row["image"], "image", where) if "image" in row else None
        questions.append(
            Question(
                key=question_key(row["question_id"]),
                text=text,
                image=image,
                row={"question_id": row["question_id"], "prompt": text},
                source=where,
                info=row,
            )
        )
    return questions


def evalai_answer_processor():
    """LLaVA's `EvalAIAnswerProcessor` (of `llava/eval/m4c_evaluator.py`), from the `vqav2` metric module."""
    return metric_module("vqav2").evalai_answer_processor


def group_accuracies(scored, scores, group_of: Mapping[str, str]) -> dict[str, float]:
    """`accuracy_<group>`: the mean score of the scored questions of each group, as the official scorers break the
    accuracy down (VQA's and VizWiz's `perAnswerType`, GQA's `binary` / `open`).

    `group_of` maps a question key to its group ("yes/no" becomes `accuracy_yes_no`); questions without a group
    count only in the overall accuracy.
    """
    totals: dict[str, list[float]] = {}
    for question, score in zip(scored, scores):
        group = group_of.get(question.key)
        if group:
            totals.setdefault(re.sub(r"[^a-z0-9]+", "_", str(group).lower()).strip("_"), []).append(float(score))
    return {f"accuracy_{group}": sum(values) / len(values) for group, values in sorted(totals.items())}


def accuracy_result(
    name, questions, answers, references, missing_policy="wrong", key_of=None, missing_note=None, groups=None
):
    """Score a short-answer benchmark whose metric returns `accuracy` and per-question scores.

    Missing answers are scored as wrong (prediction `""`) when `missing_policy == "wrong"`, left out otherwise;
    `missing_note` (what the official scorer does with them instead) is added when some are missing. `groups`
    (question key -> group) adds the per-group accuracies of `group_accuracies`.
    """
    answered, missing = predictions_and_missing(questions, answers)
    scored = answered + (missing if missing_policy == "wrong" else [])
    predictions = [answers[q.key]["text"] if q.key in answers else "" for q in scored]
    result = compute_metric(name, predictions, [references[q.key] for q in scored])
    key_of = key_of or (lambda q: str(q.row["question_id"]))
    return ScoreResult(
        metrics={"accuracy": result["accuracy"], **group_accuracies(scored, result["per_question"], groups or {})},
        per_question={key_of(q): float(s) for q, s in zip(scored, result["per_question"])},
        num_questions=len(answered) + len(missing),
        num_answered=len(answered),
        num_missing=len(missing),
        missing_policy=missing_policy,
        notes=[missing_note] if missing and missing_note else [],
    )


@register
class VQAv2(Benchmark):
    name = "vqav2"
    title = "VQAv2"
    splits = ("test-dev", "val")
    default_split = "test-dev"
    scored_splits = ("val",)
    submit_splits = ("test-dev",)

    def question_file(self, root, split):
        if split == "val":
            return os.path.join(root, "vqav2", "v2_OpenEnded_mscoco_val2014_questions.json")
        return os.path.join(root, "vqav2", "llava_vqav2_mscoco_test-dev2015.jsonl")

    def image_folder(self, root, split):
        return os.path.join(root, "vqav2", "val2014" if split == "val" else "test2015")

    def load_questions(self, root, split, question_file=None, **options):
        path = question_file or self.question_file(root, split)
        if split != "val":
            return llava_question_file(path, "the VQAv2 test-dev questions (LLaVA's eval bundle)")
        content = read_json(path, "the official VQAv2 val questions")
        rows = content.get("questions") if isinstance(content, dict) else None
        if not isinstance(rows, list):
            raise TypeError(f"{path} has no 'questions' list; expected v2_OpenEnded_mscoco_val2014_questions.json.")
        questions = []
        for i, row in enumerate(rows):
            where = f"{path}: questions[{i}]"
            require_fields(row, ("question_id", "image_id", "question"), where)
            # As LLaVA's test-dev file words every question: the question, then the short-answer suffix.
            text = require_str(row["question"], "question", where) + "\n" + SHORT_ANSWER_SUFFIX
            questions.append(
                Question(
                    key=question_key(row["question_id"]),
                    text=text,
                    image=f"COCO_val2014_{int(row['image_id']):012d}.jpg",
                    row={"question_id": row["question_id"], "prompt": text},
                    source=where,
                )
            )
        return questions

    def score(self, root, split, questions, answers, **options):
        path = os.path.join(root, "vqav2", "v2_mscoco_val2014_annotations.json")
        content = read_json(path, "the official VQAv2 val annotations")
        references, answer_types = {}, {}
        for i, annotation in enumerate(content.get("annotations", []) if isinstance(content, dict) else []):
            require_fields(annotation, ("question_id", "answers"), f"{path}: annotations[{i}]")
            references[question_key(annotation["question_id"])] = [a["answer"] for a in annotation["answers"]]
            answer_types[question_key(annotation["question_id"])] = annotation.get("answer_type")
        lacking = [q.source for q in questions if q.key not in references]
        if lacking:
            raise ValueError(f"{path} has no annotation for {len(lacking)} question(s), first {lacking[0]}.")
        return accuracy_result(
            "vqav2",
            questions,
            answers,
            references,
            missing_note="The official vqaEval.py refuses a result file that misses questions; here they score 0.",
            groups=answer_types,  # vqaEval.py's perAnswerType: yes/no, number, other
        )

    def write_submission(self, root, split, questions, answers, output):
        if split != "test-dev":
            raise ValueError("VQAv2 upload files are made for --split test-dev (the EvalAI test-dev phase).")
        path = os.path.join(root, "vqav2", "llava_vqav2_mscoco_test2015.jsonl")
        test_split = llava_question_file(path, "LLaVA's list of every VQAv2 test2015 question", image_required=False)
        process = evalai_answer_processor()
        # EvalAI wants an answer for every test2015 question: LLaVA writes "" for those not in test-dev.
        upload = [
            {
                "question_id": q.row["question_id"],
                "answer": process(answers[q.key]["text"]) if q.key in answers else "",
            }
            for q in test_split
        ]
        write_json(output, upload, indent=None)
        return {"questions": len(test_split), "answered": sum(q.key in answers for q in test_split)}


@register
class VizWiz(Benchmark):
    name = "vizwiz"
    title = "VizWiz"
    splits = ("test", "val")
    default_split = "test"
    scored_splits = ("val",)
    submit_splits = ("test",)

    def question_file(self, root, split):
        return os.path.join(root, "vizwiz", "val.json" if split == "val" else "llava_test.jsonl")

    def image_folder(self, root, split):
        return os.path.join(root, "vizwiz", split)

    def load_questions(self, root, split, question_file=None, **options):
        path = question_file or self.question_file(root, split)
        if split != "val":
            return llava_question_file(path, "the VizWiz test questions (LLaVA's eval bundle)")
        rows = read_json(path, "the VizWiz val annotations")
        if not isinstance(rows, list):
            raise TypeError(f"{path} is a {type(rows).__name__}; the VizWiz annotation format is a JSON list.")
        questions = []
        for i, row in enumerate(rows):
            where = f"{path}[{i}]"
            require_fields(row, ("image", "question", "answers"), where)
            text = require_str(row["question"], "question", where) + "\n" + VIZWIZ_SUFFIX
            image = require_str(row["image"], "image", where)
            # VizWiz has one question per image and no question ids: the image name is the id.
            questions.append(
                Question(key=question_key(image), text=text, image=image, row={"question_id": image, "prompt": text})
            )
        return questions

    def score(self, root, split, questions, answers, **options):
        path = self.question_file(root, "val")
        rows = read_json(path, "the VizWiz val annotations")
        references = {question_key(row["image"]): [a["answer"] for a in row["answers"]] for row in rows}
        return accuracy_result(
            "vizwiz",
            questions,
            answers,
            references,
            missing_note="The official VizWiz evaluation expects every question answered; here missing ones score 0.",
            # The VizWiz scorer's perAnswerType: yes/no, number, other, unanswerable.
            groups={question_key(row["image"]): row.get("answer_type") for row in rows},
        )

    def write_submission(self, root, split, questions, answers, output):
        if split != "test":
            raise ValueError("VizWiz upload files are made for --split test (the EvalAI test phase).")
        missing = [q for q in questions if q.key not in answers]
        if missing:
            # LLaVA's convert_vizwiz_for_submission.py asserts that every question has an answer.
            raise ValueError(
                f"{len(missing)} VizWiz test question(s) have no answer (first: {missing[0].source}); the server "
                "needs all of them: rerun `answer` to complete the file."
            )
        process = evalai_answer_processor()
        upload = [{"image": q.image, "answer": process(answers[q.key]["text"])} for q in questions]
        write_json(output, upload, indent=None)
        return {"questions": len(questions), "answered": len(questions)}


def textvqa_question_of(prompt: str, where: str) -> str:
    """The question inside a TextVQA prompt, lower-cased, by the rule of LLaVA's `eval_textvqa.py`.

    - `"OCR tokens: ... Question: Q Short answer:"` -> Q;
    - three lines with a `"Reference OCR token: "` line: the line that is not it among the first two
      (`"Q\\nReference OCR token: ...\\nAnswer ..."` -> Q; `"Reference OCR token: ...\\nQ\\n..."` -> Q);
    - two lines (`"Q\\nAnswer ..."`): the first.
    """
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match is None:
            raise ValueError(f"{where}: an 'OCR tokens:' prompt without 'Question: ... Short answer:'.")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(
            f"{where}: cannot find the question in prompt {prompt!r}; LLaVA's TextVQA prompts are "
            "'question\\nReference OCR token: ...\\nAnswer the question using a single word or phrase.'"
        )
    return question.lower()


@register
class TextVQA(Benchmark):
    name = "textvqa"
    title = "TextVQA"
    splits = ("val",)
    default_split = "val"
    scored_splits = ("val",)

    def question_file(self, root, split):
        return os.path.join(root, "textvqa", "llava_textvqa_val_v051_ocr.jsonl")

    def image_folder(self, root, split):
        return os.path.join(root, "textvqa", "train_images")

    def answer_key(self, row: Mapping[str, Any], where: str) -> Hashable:
        # LLaVA's question_id is the image id; the prompt (the question file's text) tells the questions apart.
        if not isinstance(row.get("prompt"), str):
            raise TypeError(
                "TextVQA answers are matched by image id and prompt (as eval_textvqa.py does): 'prompt' must be the "
                f"question file's text, got {row.get('prompt')!r}."
            )
        return (question_key(row["question_id"]), row["prompt"])

    def load_questions(self, root, split, question_file=None, **options):
        questions = llava_question_file(question_file or self.question_file(root, split), "the TextVQA questions")
        for q in questions:
            q.key = q.unit = (q.key, q.text)
        return questions

    def score(self, root, split, questions, answers, **options):
        path = os.path.join(root, "textvqa", "TextVQA_0.5.1_val.json")
        content = read_json(path, "the TextVQA 0.5.1 val annotations")
        data = content.get("data") if isinstance(content, dict) else None
        if not isinstance(data, list):
            raise TypeError(f"{path} has no 'data' list; expected TextVQA_0.5.1_val.json.")
        # As eval_textvqa.py: annotations by (image_id, lower-cased question); a repeated pair keeps the last.
        annotations = {}
        for i, annotation in enumerate(data):
            require_fields(annotation, ("image_id", "question", "answers", "question_id"), f"{path}: data[{i}]")
            annotations[(str(annotation["image_id"]), annotation["question"].lower())] = annotation
        references, per_question_id = {}, {}
        for q in questions:
            match = annotations.get((str(q.row["question_id"]), textvqa_question_of(q.text, q.source)))
            if match is None:
                raise ValueError(f"{q.source}: no annotation in {path} has this image id and question.")
            references[q.key] = list(match["answers"])
            per_question_id[q.key] = str(match["question_id"])
        return accuracy_result(
            "textvqa",
            questions,
            answers,
            references,
            missing_policy="excluded",
            key_of=lambda q: per_question_id[q.key],
        )
