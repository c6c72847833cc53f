"""Synthetic shapes dataset: determinism, answers re-derived from the scenes, loader compatibility, question metrics."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from recipes import synthetic
from recipes.synthetic import (
    COLOURS,
    NUMBER_WORDS,
    POSITIONS,
    SHAPE_PLURALS,
    SHAPES,
    caption_of,
    corpus_sentences,
    distinct_n,
    generate_shapes_dataset,
    load_scenes,
    question_is_grounded,
    question_is_well_formed,
    render_scene,
    scene_of,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return generate_shapes_dataset(out, num_train=300, num_eval=60, seed=3)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_per_seed_and_seed_changes_data(tmp_path):
    a = generate_shapes_dataset(tmp_path / "a", num_train=40, num_eval=10, seed=7)
    b = generate_shapes_dataset(tmp_path / "b", num_train=40, num_eval=10, seed=7)
    c = generate_shapes_dataset(tmp_path / "c", num_train=40, num_eval=10, seed=8)
    assert _digest(Path(a["out_dir"])) == _digest(Path(b["out_dir"]))
    assert Path(a["finetune"]).read_text() != Path(c["finetune"]).read_text()
    # Training data does not depend on the eval size (separate random streams).
    d = generate_shapes_dataset(tmp_path / "d", num_train=40, num_eval=25, seed=7)
    assert Path(a["finetune"]).read_text() == Path(d["finetune"]).read_text()


def test_layout_and_formats(shapes):
    for key in ("pretrain", "finetune", "eval", "scenes", "meta"):
        assert Path(shapes[key]).is_file(), key
    pretrain = json.loads(Path(shapes["pretrain"]).read_text())
    finetune = json.loads(Path(shapes["finetune"]).read_text())
    assert len(pretrain) == len(finetune) == 300
    for rec in pretrain:
        conv = rec["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"]
        assert conv[0]["value"].startswith("<image>\n")
        assert conv[0]["value"][len("<image>\n") :] in synthetic.CAPTION_INSTRUCTIONS
    turn_counts = Counter()
    for rec in finetune:
        conv = rec["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        turn_counts[len(conv) // 2] += 1
        assert conv[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in conv) == 1
        assert all(t["value"].strip() for t in conv)
        assert (Path(shapes["image_folder"]) / rec["image"]).is_file()
    assert set(turn_counts) <= {2, 3, 4} and len(turn_counts) == 3
    image = Image.open(Path(shapes["image_folder"]) / finetune[0]["image"])
    assert image.size == (56, 56) and image.mode == "RGB"


def test_eval_images_are_held_out(shapes):
    finetune = json.loads(Path(shapes["finetune"]).read_text())
    lines = [json.loads(x) for x in Path(shapes["eval"]).read_text().splitlines()]
    assert {"question_id", "image", "text", "answer"} <= set(lines[0])
    assert len({x["question_id"] for x in lines}) == len(lines)
    train_images = {r["image"] for r in finetune}
    assert not train_images & {x["image"] for x in lines}
    scenes = load_scenes(shapes["scenes"])

    def signature(scene):
        return sorted((o["shape"], o["colour"], o["size"], o["position"]) for o in scene["objects"])

    train_signatures = {json.dumps(signature(scenes[i])) for i in train_images}
    assert all(json.dumps(signature(scene_of(x, scenes))) not in train_signatures for x in lines)


def _expected_answer(question: str, scene) -> str:
    """Independent re-derivation of an answer from the scene metadata, by parsing the question."""
    objs = scene["objects"]
    words = re.findall(r"[a-z]+", question.lower())
    colours = [w for w in words if w in COLOURS]
    plural = {p: s for s, p in SHAPE_PLURALS.items()}
    shapes = [w if w in SHAPES else plural[w] for w in words if w in SHAPES or w in plural]
    q = question.lower()
    if q.startswith("how many"):
        sel = [o for o in objs if (not colours or o["colour"] in colours) and (not shapes or o["shape"] in shapes)]
        return NUMBER_WORDS[len(sel)]
    if q.startswith(("is there", "can you see")):
        return "yes" if any(o["colour"] == colours[0] and o["shape"] == shapes[0] for o in objs) else "no"
    matches = [o for o in objs if (not colours or o["colour"] in colours) and (not shapes or o["shape"] in shapes)]
    if "color" in q:
        assert len({o["colour"] for o in matches}) == 1, question
        return matches[0]["colour"]
    if "shape" in q and "small or large" not in q:
        assert len({o["shape"] for o in matches}) == 1, question
        return matches[0]["shape"]
    assert len(matches) == 1, (question, objs)
    if q.startswith("where"):
        return matches[0]["position"]
    return matches[0]["size"]


def _short(answer: str) -> str:
    return answer.rstrip(".").lower()


def test_answers_match_scene_metadata(shapes):
    scenes = load_scenes(shapes["scenes"])
    finetune = json.loads(Path(shapes["finetune"]).read_text())
    checked = Counter()
    for rec in finetune:
        scene = scenes[rec["image"]]
        conv = rec["conversations"]
        for human, gpt in zip(conv[::2], conv[1::2]):
            question = human["value"].replace("<image>\n", "")
            if question in synthetic.CAPTION_INSTRUCTIONS:
                assert gpt["value"] == caption_of(scene)
                checked["caption"] += 1
                continue
            assert question_is_grounded(question, scene), question
            assert question_is_well_formed(question), question
            assert _short(gpt["value"]) == _expected_answer(question, scene), (question, gpt["value"], scene)
            checked[question.split()[0]] += 1
    for line in (json.loads(x) for x in Path(shapes["eval"]).read_text().splitlines()):
        assert line["answer"] == _expected_answer(line["text"], scene_of(line, scenes)), line
    assert {"caption", "How", "Is", "Where", "What"} <= set(checked)


def test_captions_count_objects(shapes):
    scenes = load_scenes(shapes["scenes"])
    pretrain = json.loads(Path(shapes["pretrain"]).read_text())
    for rec in pretrain[:100]:
        caption = rec["conversations"][1]["value"]
        objs = scenes[rec["image"]]["objects"]
        # Each object is mentioned once as "a/an <size> <colour> <shape>" or inside "<n> <colour> <plural>".
        singles = len(
            re.findall(r"\b(?:a|an) (?:small|large) \w+ (?:circle|square|triangle|cross)\b", caption, re.IGNORECASE)
        )
        groups = sum(NUMBER_WORDS.index(n) for n in re.findall(r"\b(two|three|four)\b", caption.lower()))
        assert singles + groups == len(objs), (caption, objs)
        assert caption.endswith("on a white background.")


def test_render_pixels_follow_scene():
    scene = {"objects": [{"shape": "square", "colour": "blue", "size": "large", "row": 0, "col": 2, "dx": 0, "dy": 0}]}
    image = render_scene(scene, image_size=336)
    assert image.size == (336, 336)
    assert image.getpixel((280, 56)) == synthetic.COLOUR_RGB["blue"]  # centre of the top-right cell
    assert image.getpixel((56, 280)) == synthetic.BACKGROUND_RGB
    assert image.getpixel((168, 168)) == synthetic.BACKGROUND_RGB


def test_meta_chance_levels(shapes):
    meta = json.loads(Path(shapes["meta"]).read_text())
    lines = [json.loads(x) for x in Path(shapes["eval"]).read_text().splitlines()]
    answers = Counter(x["answer"] for x in lines)
    assert meta["num_questions"] == len(lines) == 60 * 3
    assert meta["majority_answer"] == answers.most_common(1)[0][0]
    assert meta["majority_accuracy"] == pytest.approx(answers.most_common(1)[0][1] / len(lines))
    assert 0 < meta["uniform_chance_accuracy"] < meta["chance_accuracy"] < 0.7
    # Yes/no is balanced enough that existence questions are not a free "yes".
    exist = Counter(x["answer"] for x in lines if x["question_type"] == "exist")
    assert exist["no"] > 0 and exist["yes"] > 0




def test_cli(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "recipes.synthetic", "--out", str(out), "--num-train", "5", "--num-eval", "2"],
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads((out / "finetune.json").read_text())) == 5
    assert "chance" in result.stdout


def test_loads_with_llava_loader(shapes):
    from recipes.data import SkipStats, load_llava_json

    stats = SkipStats()
    ds = load_llava_json(shapes["finetune"], stats=stats, strict=True)
    assert len(ds) == 300 and stats.total == 0
    assert ds[0]["messages"][0]["content"].startswith("<image>\n")


HAND_SCENE = {
    "objects": [
        {"shape": "circle", "colour": "red", "size": "small", "position": "top left"},
        {"shape": "square", "colour": "blue", "size": "large", "position": "center"},
        {"shape": "square", "colour": "blue", "size": "small", "position": "right"},
    ]
}


@pytest.mark.parametrize(
    "question, grounded",
    [
        ("Is there a red circle?", True),
        ("Is there a red square?", True),  # both words present, not together: a meaningful "No." question
        ("How many squares are there?", True),
        ("How many objects are there?", True),
        ("Is there a green circle?", False),
        ("How many triangles are there?", False),
        ("What color is the cross?", False),
        ("Where is the purple square?", False),
    ],
)
def test_question_is_grounded(question, grounded):
    assert question_is_grounded(question, HAND_SCENE) is grounded
    assert question_is_grounded(question, HAND_SCENE["objects"]) is grounded


@pytest.mark.parametrize(
    "question, ok",
    [
        ("How many circles are there?", True),
        ("Is there a red square in the image?", True),
        ("where is the blue cross?", True),
        ("What colour is the circle?", True),
        ("How many circles are there", False),  # no question mark
        ("The red circle is where?", False),  # does not start with a question word
        ("Is there a zebra?", False),  # unknown word
        ("Is there a red circle 2?", False),  # stray token
        ("What?", False),  # too short
        ("", False),
    ],
)
def test_question_is_well_formed(question, ok):
    assert question_is_well_formed(question) is ok


def test_short_answer_suffix_option(tmp_path):
    suffix = synthetic.SHORT_ANSWER_SUFFIX
    paths = generate_shapes_dataset(tmp_path, num_train=20, num_eval=3, answer_suffix=suffix)
    questions = [
        t["value"].replace("<image>\n", "")
        for r in json.loads(Path(paths["finetune"]).read_text())
        for t in r["conversations"][::2]
        if t["value"].replace("<image>\n", "") not in synthetic.CAPTION_INSTRUCTIONS
    ]
    assert questions and all(q.endswith("?\n" + suffix) for q in questions)
    assert all(question_is_well_formed(q) for q in questions)
    assert not any(suffix in json.loads(x)["text"] for x in Path(paths["eval"]).read_text().splitlines())
    assert json.loads(Path(paths["meta"]).read_text())["answer_suffix"] == suffix
    assert question_is_grounded("Is there a red circle?\n" + suffix, HAND_SCENE)


def test_distinct_n_hand_examples():
    # bigrams: (is there)(there a)(a red)(red circle) + (is there)(there a)(a blue)(blue circle): 6 distinct / 8
    assert distinct_n(["Is there a red circle?", "Is there a blue circle?"], n=2) == pytest.approx(6 / 8)
    assert distinct_n(["Is there a red circle?"] * 4, n=2) == pytest.approx(4 / 16)
    assert distinct_n(["What?", "Where?"], n=2) == 0.0
    assert distinct_n(["a b c"], n=1) == 1.0
    with pytest.raises(ValueError, match="`n`"):
        distinct_n(["a b"], n=0)


def test_scene_of_lookup(shapes):
    scenes = load_scenes(shapes["scenes"])
    key = "images/eval_000000.png"
    assert scene_of(key, scenes) == scenes[key]
    assert scene_of("/anywhere/eval_000000.png", scenes) == scenes[key]
    assert scene_of({"images": [str(Path(shapes["out_dir"]) / key)]}, scenes) == scenes[key]
    with pytest.raises(ValueError, match="No scene"):
        scene_of("images/nope.png", scenes)


def test_corpus_covers_every_generated_word(shapes):
    vocabulary = {w for s in corpus_sentences() for w in re.findall(r"[a-z]+", s.lower())}
    texts = [t["value"] for r in json.loads(Path(shapes["finetune"]).read_text()) for t in r["conversations"]]
    texts += [t["value"] for r in json.loads(Path(shapes["pretrain"]).read_text()) for t in r["conversations"]]
    used = {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}
    assert used <= vocabulary
    assert (
        set(COLOURS) | set(SHAPES) | set(SHAPE_PLURALS.values()) | {w for p in POSITIONS for w in p.split()}
        <= vocabulary
    )


def test_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        generate_shapes_dataset(tmp_path, num_train=-1)
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes_dataset(tmp_path, num_train=1, image_size=4)
