"""A tiny evaluation root in every format `recipes.eval` reads, with generated images (a few questions each).

The files follow the layout and the record formats of LLaVA's evaluation bundle and of the official annotation
files (VQAv2 val questions/annotations, GQA's question JSON, VizWiz's annotation list, ScienceQA's problems.json and
pid_splits.json, TextVQA 0.5.1, POPE's label files, MMBench TSVs with base64 images, LLaVA-Bench, MM-Vet). The
questions are made up; the images are coloured squares. The tests answer and score it end to end, and the README
shows the table `python -m recipes.eval run` prints on it:

    python -m recipes.eval.synthetic_root /tmp/eval-root
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os

from recipes.eval.common import SHORT_ANSWER_SUFFIX
from recipes.eval.vqa import VIZWIZ_SUFFIX

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40)}


def _image(colour: str, size: int = 32):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size + 8), (250, 250, 250))
    ImageDraw.Draw(image).rectangle([4, 6, size - 4, size], fill=COLOURS[colour])
    return image


def _save(image, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)
    return os.path.basename(path)


def _jsonl(path: str, rows) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def _json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def _vqa_answers(answers: list[str]) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


def build_vqav2(root: str) -> None:
    base = os.path.join(root, "vqav2")
    test = [(262144000, 262144, "red", "What colour is the square?"), (262144001, 262144, "red", "Is it a square?"),
            (262145000, 262145, "blue", "How many squares are there?")]  # fmt: skip
    rows = []
    for qid, image_id, colour, question in test:
        name = _save(_image(colour), os.path.join(base, "test2015", f"COCO_test2015_{image_id:012d}.jpg"))
        rows.append({"question_id": qid, "image": name, "text": f"{question}\n{SHORT_ANSWER_SUFFIX}"})
    _jsonl(os.path.join(base, "llava_vqav2_mscoco_test-dev2015.jsonl"), rows)
    # The full test2015 list (EvalAI wants an answer for each): test-dev plus questions outside it.
    extra = {"question_id": 262146000, "image": "COCO_test2015_000000262146.jpg", "text": "Is it sunny?"}
    _jsonl(os.path.join(base, "llava_vqav2_mscoco_test2015.jsonl"), [*rows, extra])
    val = [
        (393225000, 393225, "green", "What colour is the square?", ["green"] * 10, "other"),
        (393225001, 393225, "green", "How many squares?", ["1"] * 7 + ["one"] * 3, "number"),
        (393226000, 393226, "yellow", "What colour is it?", ["yellow"] * 3 + ["gold"] * 7, "other"),
    ]
    questions, annotations = [], []
    for qid, image_id, colour, question, answers, answer_type in val:
        _save(_image(colour), os.path.join(base, "val2014", f"COCO_val2014_{image_id:012d}.jpg"))
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append({"question_type": "what", "multiple_choice_answer": answers[0], "image_id": image_id,
                            "answers": _vqa_answers(answers), "answer_type": answer_type, "question_id": qid})  # fmt: skip
    _json(os.path.join(base, "v2_OpenEnded_mscoco_val2014_questions.json"),
          {"data_subtype": "val2014", "task_type": "Open-Ended", "questions": questions})  # fmt: skip
    _json(os.path.join(base, "v2_mscoco_val2014_annotations.json"),
          {"data_subtype": "val2014", "annotations": annotations})  # fmt: skip


def build_gqa(root: str) -> None:
    base = os.path.join(root, "gqa")
    items = [("201307251", "n435808", "red", "Is the square red?", "yes", "verify"),
             ("201640614", "n435809", "blue", "What colour is the square?", "blue", "query"),
             ("20968379", "n435810", "green", "Is the square yellow?", "no", "verify")]  # fmt: skip
    rows, official = [], {}
    for qid, image_id, colour, question, answer, structural in items:
        name = _save(_image(colour), os.path.join(base, "data", "images", f"{image_id}.jpg"))
        rows.append({"question_id": qid, "image": name, "text": f"{question}\n{SHORT_ANSWER_SUFFIX}"})
        official[qid] = {"question": question, "imageId": image_id, "answer": answer, "isBalanced": True,
                         "fullAnswer": f"The answer is {answer}.", "types": {"structural": structural}}  # fmt: skip
    _jsonl(os.path.join(base, "llava_gqa_testdev_balanced.jsonl"), rows)
    _json(os.path.join(base, "data", "testdev_balanced_questions.json"), official)


def build_vizwiz(root: str) -> None:
    base = os.path.join(root, "vizwiz")
    test = [(0, "red", "What colour is this?"), (1, "blue", "What is this?")]
    rows = []
    for i, colour, question in test:
        name = _save(_image(colour), os.path.join(base, "test", f"VizWiz_test_{i:08d}.jpg"))
        rows.append({"question_id": i, "image": name, "text": f"{question}\n{VIZWIZ_SUFFIX}"})
    _jsonl(os.path.join(base, "llava_test.jsonl"), rows)
    val = [("green", "What colour is this?", ["Green"] * 4 + ["green"] * 2 + ["lime"] * 4, 1, "other"),
           ("yellow", "Can you tell me what this is?", ["unanswerable"] * 6 + ["yellow"] * 4, 0, "unanswerable")]  # fmt: skip
    annotations = []
    for i, (colour, question, answers, answerable, answer_type) in enumerate(val):
        name = _save(_image(colour), os.path.join(base, "val", f"VizWiz_val_{i:08d}.jpg"))
        annotations.append({"image": name, "question": question, "answerable": answerable, "answer_type": answer_type,
                            "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]})  # fmt: skip
    _json(os.path.join(base, "val.json"), annotations)


def build_scienceqa(root: str) -> None:
    base = os.path.join(root, "scienceqa")
    items = [
        ("4", "red", "Which colour is the square?", ["red", "blue"], 0),
        ("7", None, "Which is a mammal?", ["trout", "horse", "frog"], 1),
        ("12", "blue", "Which word names the colour in the image?", ["green", "yellow", "blue"], 2),
    ]
    questions, problems = [], {}
    for pid, colour, question, choices, answer in items:
        options = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
        value = f"Context: N/A\nQuestion: {question}\nOptions: {options}" + ("\n<image>" if colour else "")
        record = {
            "id": pid,
            "conversations": [
                {"from": "human", "value": value},
                {"from": "gpt", "value": f"The answer is {chr(65 + answer)}."},
            ],
        }
        if colour:
            _save(_image(colour), os.path.join(base, "images", "test", pid, "image.png"))
            record["image"] = f"{pid}/image.png"
        questions.append(record)
        problems[pid] = {"question": question, "choices": choices, "answer": answer, "hint": "",
                         "image": "image.png" if colour else None, "split": "test", "subject": "natural science"}  # fmt: skip
    problems["99"] = {"question": "Train-only problem?", "choices": ["a", "b"], "answer": 0, "image": None,
                      "split": "train"}  # fmt: skip
    _json(os.path.join(base, "llava_test_CQM-A.json"), questions)
    _json(os.path.join(base, "problems.json"), problems)
    _json(os.path.join(base, "pid_splits.json"), {"train": ["99"], "val": [], "test": [pid for pid, *_ in items]})


def build_textvqa(root: str) -> None:
    base = os.path.join(root, "textvqa")
    # Two questions about one image share LLaVA's question_id (the image id), as in the real file.
    items = [(34602, "003a8ae2ef43b901", "red", "what colour is the sign?", "stop, red", ["red"] * 9 + ["Red."]),
             (34603, "003a8ae2ef43b901", "red", "what does the sign say?", "stop, red", ["stop"] * 4 + ["halt"] * 6),
             (34604, "00685bc495504d61", "blue", "what brand is this?", "nikon", ["nikon"] * 2 + ["canon"] * 8)]  # fmt: skip
    rows, data = [], []
    for qid, image_id, colour, question, ocr, answers in items:
        name = _save(_image(colour), os.path.join(base, "train_images", f"{image_id}.jpg"))
        rows.append({"question_id": image_id, "image": name,
                     "text": f"{question}\nReference OCR token: {ocr}\n{SHORT_ANSWER_SUFFIX}"})  # fmt: skip
        data.append({"question": question, "image_id": image_id, "answers": answers, "question_id": qid,
                     "image_classes": ["sign"], "set_name": "val"})  # fmt: skip
    _jsonl(os.path.join(base, "llava_textvqa_val_v051_ocr.jsonl"), rows)
    _json(os.path.join(base, "TextVQA_0.5.1_val.json"), {"dataset_name": "textvqa", "dataset_version": "0.5.1",
                                                          "data": data})  # fmt: skip


POPE_ITEMS = {
    "adversarial": [("red", "a square", "yes"), ("red", "a dog", "no")],
    "popular": [("blue", "a square", "yes"), ("blue", "a person", "no")],
    "random": [("green", "a square", "yes"), ("green", "a car", "no"), ("yellow", "a square", "yes")],
}


def build_pope(root: str) -> None:
    base = os.path.join(root, "pope")
    rows, qid, image_id = [], 1, 16631
    for split, items in POPE_ITEMS.items():
        labels = []
        for colour, thing, label in items:
            name = _save(_image(colour), os.path.join(base, "val2014", f"COCO_val2014_{image_id:012d}.jpg"))
            question = f"Is there {thing} in the image?"
            rows.append({"question_id": qid, "image": name, "text": f"{question}\n{SHORT_ANSWER_SUFFIX}",
                         "category": split})  # fmt: skip
            labels.append({"question_id": len(labels) + 1, "image": name, "text": question, "label": label})
            qid, image_id = qid + 1, image_id + 1
        _jsonl(os.path.join(base, "coco", f"coco_pope_{split}.json"), labels)
    _jsonl(os.path.join(base, "llava_pope_test.jsonl"), rows)


MMBENCH_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                   "l2-category", "comment", "split"]  # fmt: skip


def _b64(colour: str) -> str:
    buffer = io.BytesIO()
    _image(colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def build_mmbench(root: str) -> None:
    base = os.path.join(root, "mmbench")
    english = [
        (0, "What colour is the square?", "", ["red", "green", "blue", "yellow"], "A", "red"),
        (1, "Which shape is shown?", "The image shows one shape.", ["circle", "square", "triangle", ""], "B", "blue"),
        (2, "Is the background light?", "nan", ["yes", "no", "", ""], "A", "green"),
    ]
    chinese = [
        (0, "正方形是什么颜色？", "", ["红色", "绿色", "蓝色", "黄色"], "A", "red"),
        (1, "图中是什么形状？", "图中有一个形状。", ["圆形", "正方形", "三角形", ""], "B", "blue"),
    ]
    for name, items in (("mmbench_dev_20230712.tsv", english), ("mmbench_dev_cn_20231003.tsv", chinese)):
        os.makedirs(base, exist_ok=True)
        with open(os.path.join(base, name), "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(MMBENCH_COLUMNS)
            for index, question, hint, options, answer, colour in items:
                writer.writerow([index, question, hint, *options, answer, "colour_recognition", _b64(colour),
                                 "synthetic", "coarse_perception", "", "dev"])  # fmt: skip


def build_llava_bench(root: str) -> None:
    base = os.path.join(root, "llava-bench-in-the-wild")
    items = [(0, "001", "red", "conv", "What colour is the square?", "The square is red."),
             (1, "001", "red", "detail", "Describe the image in detail.", "A red square on a white background."),
             (2, "002", "blue", "complex", "Why might someone draw a blue square?", "To show a simple shape.")]  # fmt: skip
    questions, answers, contexts = [], [], {}
    for qid, image_id, colour, category, question, answer in items:
        name = _save(_image(colour), os.path.join(base, "images", f"{image_id}.jpg"))
        questions.append({"image": name, "text": question, "category": category, "question_id": qid})
        answers.append({"question_id": qid, "prompt": question, "text": answer, "answer_id": f"gpt4-{qid}",
                        "model_id": "gpt-4-0314", "metadata": {}})  # fmt: skip
        contexts[name] = {"id": image_id, "image": name, "caption": f"A {colour} square on a white background."}
    _jsonl(os.path.join(base, "questions.jsonl"), questions)
    _jsonl(os.path.join(base, "answers_gpt4.jsonl"), answers)
    _jsonl(os.path.join(base, "context.jsonl"), contexts.values())


def build_mmvet(root: str) -> None:
    base = os.path.join(root, "mm-vet")
    items = [(0, "red", "What colour is the square?", "red", ["rec"]),
             (1, "blue", "How many squares are there?", "1<OR>one", ["rec", "math"])]  # fmt: skip
    rows, samples = [], {}
    for qid, colour, question, answer, capability in items:
        name = _save(_image(colour), os.path.join(base, "images", f"v1_{qid}.png"))
        rows.append({"question_id": qid, "image": name, "text": question})
        samples[f"v1_{qid}"] = {"imagename": name, "capability": capability, "question": question, "answer": answer}
    _jsonl(os.path.join(base, "llava-mm-vet.jsonl"), rows)
    _json(os.path.join(base, "mm-vet.json"), samples)


BUILDERS = {
    "vqav2": build_vqav2,
    "gqa": build_gqa,
    "vizwiz": build_vizwiz,
    "scienceqa": build_scienceqa,
    "textvqa": build_textvqa,
    "pope": build_pope,
    "mmbench": build_mmbench,
    "llava_bench": build_llava_bench,
    "mmvet": build_mmvet,
}


def build_synthetic_eval_root(root: str) -> str:
    """Write the synthetic evaluation root into `root` (created); returns `root`."""
    for build in BUILDERS.values():
        build(root)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("root", help="Folder to write the evaluation root into.")
    args = parser.parse_args(argv)
    build_synthetic_eval_root(args.root)
    print(f"wrote a synthetic evaluation root (every benchmark's files) to {args.root}")


if __name__ == "__main__":
    main()
