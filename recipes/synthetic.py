"""Synthetic "shapes" dataset: the embedded default that trains SQ-LLaVA end to end with no downloads.

Every image is a plain white canvas split into a 3x3 grid; 1 to 4 objects (shape, colour, size) sit in distinct
cells. The generator writes the same files as the real LLaVA data, so the same loader reads both:

    out_dir/
      images/train_000000.png ...  images/eval_000000.png ...
      pretrain.json    stage 1: LLaVA-558K-style captions ("<image>\\nDescribe the image briefly." -> caption)
      finetune.json    stage 2: multi-turn QA (2-4 turns) about colour, count, position, size and existence
      eval.jsonl       held-out questions in the LLaVA eval format (question_id, image, text, answer)
      scenes.json      scene metadata per image (what is where), to re-derive answers and judge questions
      meta.json        chance levels of the eval questions (majority answer, per-type majority) and settings

Answers are short templated phrases from a small vocabulary ("Two.", "Top left.", "Yes.") so a tiny model can learn
them, yet every answer depends on the image. Questions are grounded: they only mention shapes and colours present in
the image ("Is there a green triangle?" is asked with answer "No." only when some green object and some triangle are
present), so self-generated questions can be judged with the same rule (`question_is_grounded`).

Command line:

    python -m recipes.synthetic --out data/shapes --num-train 2000 --num-eval 200

>>> from recipes.synthetic import generate_shapes_dataset
>>> paths = generate_shapes_dataset("data/shapes", num_train=2000, num_eval=200)  # doctest: +SKIP
>>> paths["finetune"]  # doctest: +SKIP
'data/shapes/finetune.json'
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw


# ----------------------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SHAPE_PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 210, 20),
    "purple": (140, 45, 185),
    "orange": (245, 130, 20),
}
SIZES: tuple[str, ...] = ("small", "large")
# Radius of an object as a fraction of a grid cell.
SIZE_RADIUS: dict[str, float] = {"small": 0.24, "large": 0.42}
# Row-major 3x3 grid: POSITIONS[3 * row + col].
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
POSITION_PHRASES: dict[str, str] = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_OBJECTS = 4
BACKGROUND = "white"
BACKGROUND_RGB = (255, 255, 255)

# Stage-1 instructions (the LLaVA-558K style: a brief-caption request after the image).
CAPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image briefly.",
    "Give a short description of the image.",
    "What is in the image?",
    "Write a short caption for the image.",
)
# LLaVA-1.5's short-answer suffix; not used by the generated questions, listed so a tokenizer trained on
# `corpus_sentences()` also covers prompts that append it.
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."

# Question templates by type. `{c}` colour, `{s}` shape, `{p}` shape plural, `{pos}` position name.
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "exist": ("Is there a {c} {s}?", "Is there a {c} {s} in the image?", "Can you see a {c} {s}?"),
    "count_shape": ("How many {p} are there?", "How many {p} are in the image?", "How many {p} can you see?"),
    "count_colour": ("How many {c} objects are there?", "How many {c} shapes are in the image?"),
    "count_all": ("How many objects are there?", "How many shapes are in the image?", "How many objects can you see?"),
    "colour": ("What color is the {s}?", "Which color is the {s}?"),
    "shape": ("What shape is the {c} object?", "Which shape is {c}?"),
    "position": ("Where is the {c} {s}?", "Where is the {c} {s} in the image?"),
    "size": ("What size is the {c} {s}?", "Is the {c} {s} small or large?"),
}
QUESTION_TYPES: tuple[str, ...] = tuple(QUESTION_TEMPLATES)
QUESTION_WORDS: tuple[str, ...] = (
    "what", "which", "where", "how", "who", "why", "when", "is", "are", "can", "does", "do", "could", "was",
)  # fmt: skip

_WORD_RE = re.compile(r"[a-z]+")


# ----------------------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------------------


def _sample_scene(rng: random.Random) -> dict[str, Any]:
    """A scene: 1-4 objects in distinct grid cells, each with shape, colour, size and a small pixel jitter."""
    num_objects = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(9), num_objects)
    objects = []
    for cell in cells:
        if objects and rng.random() < 0.3:
            # Repeat an earlier shape+colour so that counts above one and grouped captions ("two blue squares") occur.
            twin = rng.choice(objects)
            shape, colour = twin["shape"], twin["colour"]
        else:
            shape, colour = rng.choice(SHAPES), rng.choice(COLOURS)
        objects.append(
            {
                "shape": shape,
                "colour": colour,
                "size": rng.choice(SIZES),
                "position": POSITIONS[cell],
                "row": cell // 3,
                "col": cell % 3,
                # Jitter in units of a cell, so the same scene renders alike at every image size.
                "dx": round(rng.uniform(-0.08, 0.08), 4),
                "dy": round(rng.uniform(-0.08, 0.08), 4),
            }
        )
    objects.sort(key=lambda o: (o["row"], o["col"]))  # reading order: captions list objects top-left first
    return {"background": BACKGROUND, "objects": objects}


def _scene_signature(scene: Mapping[str, Any]) -> tuple:
    return tuple(sorted((o["shape"], o["colour"], o["size"], o["position"]) for o in scene["objects"]))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * math.sqrt(3) / 2, cy + r / 2), (cx - r * math.sqrt(3) / 2, cy + r / 2)]
    if shape == "cross":
        t = r * 0.38  # half the arm thickness
        return [
            (cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx + t, cy + t),
            (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    return None


def render_scene(scene: Mapping[str, Any], image_size: int = 56) -> Image.Image:
    """Draws a scene (as stored in `scenes.json`) into an RGB image of `image_size` x `image_size` pixels.

    Args:
        scene: `{"background": "white", "objects": [{"shape", "colour", "size", "row", "col", "dx", "dy"}, ...]}`.
        image_size: side of the square image in pixels (56 for the tiny CLIP tower, 336 for CLIP-L/14-336).
    """
    image = Image.new("RGB", (image_size, image_size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    cell = image_size / 3
    for obj in scene["objects"]:
        cx = (obj["col"] + 0.5 + obj.get("dx", 0.0)) * cell
        cy = (obj["row"] + 0.5 + obj.get("dy", 0.0)) * cell
        r = SIZE_RADIUS[obj["size"]] * cell
        fill = COLOUR_RGB[obj["colour"]]
        if obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif obj["shape"] == "square":
            h = r * 0.85  # a square of the same "radius" would look larger than the circle
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        else:
            draw.polygon(_polygon(obj["shape"], cx, cy, r), fill=fill)
    return image


# ----------------------------------------------------------------------------------------------------------------------
# Text: captions, questions, answers
# ----------------------------------------------------------------------------------------------------------------------


def _answer(text: str) -> str:
    """Training answers are capitalised short phrases ending with a full stop: "top left" -> "Top left."."""
    return text[:1].upper() + text[1:] + "."


def _with_article(phrase: str) -> str:
    return "an " + phrase if phrase[0] in "aeiou" else "a " + phrase


def caption_of(scene: Mapping[str, Any]) -> str:
    """Caption of a scene: objects sharing shape and colour are grouped ("two blue squares"), single ones get
    size and position ("a small red circle in the top left corner").

    >>> caption_of({"objects": [{"shape": "circle", "colour": "red", "size": "small", "position": "top left"}]})
    'A small red circle in the top left corner on a white background.'
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for obj in scene["objects"]:
        groups.setdefault((obj["colour"], obj["shape"]), []).append(obj)
    parts = []
    for (colour, shape), objs in groups.items():
        if len(objs) == 1:
            o = objs[0]
            parts.append(f"{_with_article(o['size'] + ' ' + colour + ' ' + shape)} {POSITION_PHRASES[o['position']]}")
        else:
            parts.append(f"{NUMBER_WORDS[len(objs)]} {colour} {SHAPE_PLURALS[shape]}")
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    background = scene.get("background", BACKGROUND)
    return _answer(f"{text} on {_with_article(background)} background")


def _candidate_questions(scene: Mapping[str, Any]) -> dict[str, list[tuple[dict[str, str], str]]]:
    """Every grounded (slots, answer) pair of the scene, by question type."""
    objs = scene["objects"]
    shapes = Counter(o["shape"] for o in objs)
    colours = Counter(o["colour"] for o in objs)
    pairs = Counter((o["colour"], o["shape"]) for o in objs)
    cand: dict[str, list[tuple[dict[str, str], str]]] = {t: [] for t in QUESTION_TYPES}
    for c, s in pairs:
        cand["exist"].append(({"c": c, "s": s}, "yes"))
    for c in colours:
        for s in shapes:
            if (c, s) not in pairs:  # grounded negative: the colour and the shape are there, not together
                cand["exist"].append(({"c": c, "s": s}, "no"))
    for s, n in shapes.items():
        cand["count_shape"].append(({"p": SHAPE_PLURALS[s]}, NUMBER_WORDS[n]))
    for c, n in colours.items():
        cand["count_colour"].append(({"c": c}, NUMBER_WORDS[n]))
    cand["count_all"].append(({}, NUMBER_WORDS[len(objs)]))
    for s, n in shapes.items():
        shape_colours = {o["colour"] for o in objs if o["shape"] == s}
        if len(shape_colours) == 1:  # "What color is the circle?" only when the answer is unambiguous
            cand["colour"].append(({"s": s}, shape_colours.pop()))
    for c in colours:
        colour_shapes = {o["shape"] for o in objs if o["colour"] == c}
        if len(colour_shapes) == 1:
            cand["shape"].append(({"c": c}, colour_shapes.pop()))
    for o in objs:
        if pairs[(o["colour"], o["shape"])] == 1:  # position and size only for a unique colour+shape
            cand["position"].append(({"c": o["colour"], "s": o["shape"]}, o["position"]))
            cand["size"].append(({"c": o["colour"], "s": o["shape"]}, o["size"]))
    return cand


def _draw_questions(scene: Mapping[str, Any], rng: random.Random, k: int) -> list[tuple[str, str, str]]:
    """Draws up to `k` distinct (question type, question, answer) triples, one type at most once when possible."""
    cand = _candidate_questions(scene)
    types = [t for t in QUESTION_TYPES if cand[t]]
    rng.shuffle(types)
    out: list[tuple[str, str, str]] = []
    for qtype in types[:k]:
        options = cand[qtype]
        if qtype == "exist":
            # Balance yes/no whenever both exist so that "yes" is not the majority answer by construction.
            yes = [o for o in options if o[1] == "yes"]
            no = [o for o in options if o[1] == "no"]
            options = no if (no and rng.random() < 0.5) else yes
        slots, answer = rng.choice(options)
        question = rng.choice(QUESTION_TEMPLATES[qtype]).format(**slots)
        out.append((qtype, question, answer))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------


def _check_count(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def generate_shapes_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 2000,
    num_eval: int = 200,
    image_size: int = 56,
    seed: int = 0,
    *,
    eval_questions_per_image: int = 3,
    caption_turn_prob: float = 0.25,
    answer_suffix: str | None = None,
) -> dict[str, str]:
    """Generates the synthetic shapes dataset (images + LLaVA JSON + eval questions). Deterministic per `seed`.

    Train images get one caption record (stage 1) and one 2-4-turn conversation (stage 2) each; eval images are
    distinct scenes (no eval scene has the same objects, sizes and positions as a train scene) with
    `eval_questions_per_image` single questions each.

    Args:
        out_dir: output folder (created). Image paths in the JSON files are relative to it, so it is the
            `image_folder` of the loader.
        num_train: number of training images.
        num_eval: number of held-out images.
        image_size: side of the square images in pixels (56 matches the tiny CLIP tower with patch 14; 336 CLIP-L).
        seed: seed of everything (scenes, questions, templates).
        eval_questions_per_image: questions asked about each held-out image (distinct question types).
        caption_turn_prob: probability that a stage-2 conversation opens with a brief-caption request before the
            questions, so the fine-tuned model can still describe an image (the self-questioning demo does).
        answer_suffix: appended on a new line to every training question (LLaVA-1.5 trains its short-answer VQA
            data with `SHORT_ANSWER_SUFFIX`); `None` (default) keeps questions bare. Eval `text` is always the bare
            question; the value is recorded in `meta.json` so the evaluation can append the same suffix.

    Returns:
        `dict` with the paths `out_dir`, `image_folder`, `images`, `pretrain`, `finetune`, `eval`, `scenes`, `meta`.

    >>> paths = generate_shapes_dataset("data/shapes", num_train=8, num_eval=4)  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['eval', 'finetune', 'image_folder', 'images', 'meta', 'out_dir', 'pretrain', 'scenes']
    """
    _check_count("num_train", num_train, 0)
    _check_count("num_eval", num_eval, 0)
    _check_count("image_size", image_size, 12)
    _check_count("eval_questions_per_image", eval_questions_per_image, 1)
    if not 0.0 <= caption_turn_prob <= 1.0:
        raise ValueError(f"`caption_turn_prob` must be in [0, 1], got {caption_turn_prob!r}.")

    out_dir = os.fspath(out_dir)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    # Separate streams so that changing `num_eval` does not change the training data and vice versa.
    train_rng = random.Random(f"shapes-train-{seed}")
    eval_rng = random.Random(f"shapes-eval-{seed}")

    scenes: dict[str, dict[str, Any]] = {}
    pretrain: list[dict[str, Any]] = []
    finetune: list[dict[str, Any]] = []
    train_signatures = set()
    train_answers: dict[str, Counter] = {t: Counter() for t in QUESTION_TYPES}
    for i in range(num_train):
        scene = _sample_scene(train_rng)
        train_signatures.add(_scene_signature(scene))
        image = f"images/train_{i:06d}.png"
        render_scene(scene, image_size).save(os.path.join(out_dir, image), compress_level=1)
        scenes[image] = scene
        pretrain.append(
            {
                "id": f"shapes-cap-{i:06d}",
                "image": image,
                "conversations": [
                    {"from": "human", "value": "<image>\n" + train_rng.choice(CAPTION_INSTRUCTIONS)},
                    {"from": "gpt", "value": caption_of(scene)},
                ],
            }
        )
        turns: list[tuple[str, str]] = []
        if train_rng.random() < caption_turn_prob:
            turns.append((train_rng.choice(CAPTION_INSTRUCTIONS), caption_of(scene)))
        num_qa = train_rng.randint(2, 4) - len(turns)
        for qtype, question, answer in _draw_questions(scene, train_rng, num_qa):
            turns.append((question if answer_suffix is None else f"{question}\n{answer_suffix}", _answer(answer)))
            train_answers[qtype][answer] += 1
        conversations = []
        for t, (question, answer) in enumerate(turns):
            conversations.append({"from": "human", "value": ("<image>\n" if t == 0 else "") + question})
            conversations.append({"from": "gpt", "value": answer})
        finetune.append({"id": f"shapes-qa-{i:06d}", "image": image, "conversations": conversations})

    eval_lines: list[dict[str, Any]] = []
    qid = 0
    for i in range(num_eval):
        scene = _sample_scene(eval_rng)
        while _scene_signature(scene) in train_signatures:  # held-out means unseen scenes, not only unseen pixels
            scene = _sample_scene(eval_rng)
        image = f"images/eval_{i:06d}.png"
        render_scene(scene, image_size).save(os.path.join(out_dir, image), compress_level=1)
        scenes[image] = scene
        for qtype, question, answer in _draw_questions(scene, eval_rng, eval_questions_per_image):
            # `answer` is the normalised short answer (lower case, no punctuation), as VQA-style metrics compare.
            eval_lines.append(
                {"question_id": qid, "image": image, "text": question, "answer": answer, "question_type": qtype}
            )
            qid += 1

    paths = {
        "out_dir": out_dir,
        "image_folder": out_dir,
        "images": image_dir,
        "pretrain": os.path.join(out_dir, "pretrain.json"),
        "finetune": os.path.join(out_dir, "finetune.json"),
        "eval": os.path.join(out_dir, "eval.jsonl"),
        "scenes": os.path.join(out_dir, "scenes.json"),
        "meta": os.path.join(out_dir, "meta.json"),
    }
    _write_json(paths["pretrain"], pretrain)
    _write_json(paths["finetune"], finetune)
    _write_json(paths["scenes"], scenes)
    with open(paths["eval"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in eval_lines)
    meta = {
        "generator": "recipes.synthetic.generate_shapes_dataset",
        "seed": seed,
        "image_size": image_size,
        "num_train": num_train,
        "num_eval": num_eval,
        "answer_suffix": answer_suffix,
        **chance_levels(eval_lines, train_answers),
    }
    _write_json(paths["meta"], meta, indent=2)
    return paths


def _write_json(path: str, obj: Any, indent: int | None = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)


def chance_levels(
    eval_lines: Sequence[Mapping[str, Any]], train_answers: Mapping[str, Counter] | None = None
) -> dict[str, Any]:
    """Baselines a model must beat on the eval questions.

    - `majority_accuracy`: always answer the single most frequent eval answer.
    - `per_type_majority_accuracy`: for each question type, answer its most frequent *training* answer (a "blind"
      model that knows the question but not the image); the honest chance level to report.
    - `uniform_chance_accuracy`: expected accuracy of picking uniformly among the answers possible for each type.

    Args:
        eval_lines: eval records with `answer` and `question_type`.
        train_answers: per question type, a `Counter` of training answers; defaults to the eval answers themselves.
    """
    answers = Counter(line["answer"] for line in eval_lines)
    by_type: dict[str, Counter] = {}
    for line in eval_lines:
        by_type.setdefault(line["question_type"], Counter())[line["answer"]] += 1
    priors = train_answers if train_answers is not None else by_type
    n = len(eval_lines)
    per_type_correct = 0
    for qtype, counts in by_type.items():
        prior = priors.get(qtype) or counts
        per_type_correct += counts[prior.most_common(1)[0][0]]
    support = {
        "exist": 2,
        "count_shape": MAX_OBJECTS,
        "count_colour": MAX_OBJECTS,
        "count_all": MAX_OBJECTS,
        "colour": len(COLOURS),
        "shape": len(SHAPES),
        "position": len(POSITIONS),
        "size": len(SIZES),
    }
    uniform = sum(counts.total() / support[t] for t, counts in by_type.items())
    majority = answers.most_common(1)[0] if answers else (None, 0)
    return {
        "num_questions": n,
        "question_types": {t: c.total() for t, c in sorted(by_type.items())},
        "majority_answer": majority[0],
        "majority_accuracy": majority[1] / n if n else 0.0,
        "per_type_majority_accuracy": per_type_correct / n if n else 0.0,
        "uniform_chance_accuracy": uniform / n if n else 0.0,
        "chance_accuracy": per_type_correct / n if n else 0.0,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Question quality (the ablation's metrics) and scenes
# ----------------------------------------------------------------------------------------------------------------------


def load_scenes(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Reads `scenes.json` (image path relative to the dataset folder -> scene)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def scene_of(item: str | Mapping[str, Any], scenes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The scene of an image, looked up in `scenes` (from `load_scenes`).

    Args:
        item: an image path (relative, absolute or just the file name), an eval line (`{"image": ...}`), a LLaVA
            record (`{"image": ...}`) or a canonical record (`{"images": [path]}`).
        scenes: the `scenes.json` mapping.
    """
    if isinstance(item, Mapping):
        image = item.get("image")
        if image is None and item.get("images"):
            image = item["images"][0]
        if not isinstance(image, (str, os.PathLike)):
            raise TypeError(f"`item` must carry an image path under 'image' or 'images', got keys {list(item)}.")
        item = image
    key = os.fspath(item)
    if key in scenes:
        return dict(scenes[key])
    name = os.path.basename(key)
    if f"images/{name}" in scenes:
        return dict(scenes[f"images/{name}"])
    raise ValueError(f"No scene for image {key!r}; pass a path of the generated dataset (e.g. 'images/{name}').")


def _strip_suffix(question: str) -> str:
    """The question without a trailing LLaVA short-answer suffix (a model trained with it may generate it)."""
    text = question.strip()
    if text.endswith(SHORT_ANSWER_SUFFIX):
        text = text[: -len(SHORT_ANSWER_SUFFIX)].strip()
    return text


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def _scene_objects(scene: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    return scene["objects"] if isinstance(scene, Mapping) else scene


def question_is_grounded(question: str, scene: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> bool:
    """Whether a question mentions only shapes and colours present in the image.

    Each shape word (singular or plural) and each colour word of the question must belong to some object of the
    scene; they need not belong to the same object ("Is there a red square?" is grounded when a red circle and a
    blue square are present: it is a meaningful question whose answer is "No.").

    Args:
        question: the question text.
        scene: a scene from `scenes.json` (or its list of objects).

    >>> scene = {"objects": [{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}]}
    >>> question_is_grounded("Is there a red square?", scene), question_is_grounded("Is there a green circle?", scene)
    (True, False)
    """
    question = _strip_suffix(question)
    objs = _scene_objects(scene)
    present_shapes = {o["shape"] for o in objs}
    present_colours = {o["colour"] for o in objs}
    plural_to_shape = {p: s for s, p in SHAPE_PLURALS.items()}
    for word in _words(question):
        shape = word if word in SHAPES else plural_to_shape.get(word)
        if shape is not None and shape not in present_shapes:
            return False
        if word in COLOURS and word not in present_colours:
            return False
    return True


def known_words() -> frozenset[str]:
    """Every word the generator writes (captions, instructions, questions, answers), lower case."""
    return _KNOWN_WORDS


def question_is_well_formed(question: str) -> bool:
    """Whether a text is a well-formed question: ends with "?", starts with a question word or auxiliary
    ("what", "how", "is", ...), has at least three words, and uses only words of the generator's vocabulary. A
    trailing LLaVA short-answer suffix (`SHORT_ANSWER_SUFFIX`) is ignored.

    >>> question_is_well_formed("How many circles are there?"), question_is_well_formed("circles circles?")
    (True, False)
    """
    text = _strip_suffix(question)
    if not text.endswith("?"):
        return False
    words = _words(text)
    if len(words) < 3 or words[0] not in QUESTION_WORDS:
        return False
    # Any stray character (digits, other scripts) means the text is not made of known words only.
    if re.sub(r"[A-Za-z\s?.,']", "", text):
        return False
    return all(w in _KNOWN_WORDS for w in words)


def distinct_n(questions: Iterable[str], n: int = 2) -> float:
    """Distinct-n diversity (Li et al., 2016): distinct word n-grams / total word n-grams over all questions.

    Words are lower-cased and punctuation is ignored; n-grams do not cross question boundaries. Returns 0.0 when
    there is no n-gram.

    >>> distinct_n(["Is there a red circle?", "Is there a blue circle?"], n=2)
    0.75
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n!r}.")
    total = 0
    seen = set()
    for q in questions:
        words = _words(q)
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def corpus_sentences() -> list[str]:
    """Representative sentences covering every word and template of the generator (for training the tiny tokenizer).

    Deterministic; includes captions, caption instructions, every question template with every slot value, every
    answer, and LLaVA's short-answer suffix.
    """
    sentences: list[str] = list(CAPTION_INSTRUCTIONS) + [SHORT_ANSWER_SUFFIX]
    for templates in QUESTION_TEMPLATES.values():
        for template in templates:
            for c in COLOURS:
                for s in SHAPES:
                    sentences.append(template.format(c=c, s=s, p=SHAPE_PLURALS[s]))
    sentences = list(dict.fromkeys(sentences))  # templates without a slot repeat
    answers = ["yes", "no"] + list(NUMBER_WORDS[1 : MAX_OBJECTS + 1]) + list(COLOURS) + list(SHAPES)
    answers += list(POSITIONS) + list(SIZES)
    sentences += [_answer(a) for a in answers]
    rng = random.Random("corpus")
    for c in COLOURS:
        for s in SHAPES:
            for size in SIZES:
                for pos in POSITIONS:
                    sentences.append(
                        caption_of({"objects": [{"shape": s, "colour": c, "size": size, "position": pos}]})
                    )
    for _ in range(200):
        sentences.append(caption_of(_sample_scene(rng)))
    for number in NUMBER_WORDS[2 : MAX_OBJECTS + 1]:
        for c in COLOURS:
            for s in SHAPES:
                sentences.append(_answer(f"{number} {c} {SHAPE_PLURALS[s]} on a white background"))
    return sentences


_KNOWN_WORDS: frozenset[str] = frozenset(w for s in corpus_sentences() for w in _words(s)) | {"colour"}


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(
        description="Generate the synthetic shapes dataset (LLaVA JSON + images).", allow_abbrev=False
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-eval", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-questions-per-image", type=int, default=3)
    parser.add_argument(
        "--short-answer-suffix", action="store_true", help=f"append {SHORT_ANSWER_SUFFIX!r} to training questions"
    )
    args = parser.parse_args(argv)
    paths = generate_shapes_dataset(
        args.out,
        num_train=args.num_train,
        num_eval=args.num_eval,
        image_size=args.image_size,
        seed=args.seed,
        eval_questions_per_image=args.eval_questions_per_image,
        answer_suffix=SHORT_ANSWER_SUFFIX if args.short_answer_suffix else None,
    )
    with open(paths["meta"], encoding="utf-8") as f:
        meta = json.load(f)
    print(
        f"Wrote {args.num_train} train and {args.num_eval} eval images to {paths['out_dir']}: "
        f"{meta['num_questions']} eval questions, chance (per-type majority) {meta['chance_accuracy']:.3f}, "
        f"majority answer {meta['majority_answer']!r} {meta['majority_accuracy']:.3f}"
    )
    return paths


if __name__ == "__main__":
    main()
