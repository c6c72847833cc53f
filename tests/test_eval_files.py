"""recipes.eval files: every bad input names the file and the line, and nothing already answered is lost.

No model here: answers files are written by hand in LLaVA's format and read the way `score` and `answer` read them.
"""

from __future__ import annotations

import json
import os

import pytest

from recipes.eval.common import AnswersFileError, Question, chunk_questions, get_benchmark, read_answers


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from recipes.eval.synthetic_root import build_synthetic_eval_root

    return build_synthetic_eval_root(str(tmp_path_factory.mktemp("eval-root")))


def gqa_keys(root):
    from collections import Counter

    return Counter(q.key for q in get_benchmark("gqa").load_questions(root, "testdev_balanced"))


def answer_line(question_id, text="yes", model_id="m", **extra) -> str:
    row = {"question_id": question_id, "prompt": "p", "text": text, "answer_id": "a", "model_id": model_id,
           "metadata": {}, **extra}  # fmt: skip
    return json.dumps(row) + "\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (answer_line("201307251") + '{"question_id": "201640614", "text": 42}\n', r"answers.jsonl:2: 'text' is 42"),
        (answer_line("201307251") + '{"question_id": "201640614", "text": null}\n', r"answers.jsonl:2: 'text' is None"),
        (answer_line("201307251") + answer_line("201307251"),
         r"answers.jsonl:2 answers question '201307251' again \(first answered at .*answers.jsonl:1\)"),
        (answer_line("201307251") + '{"question_id": "2016', r"answers.jsonl:2 is not valid JSON\. It is half-written"),
        ('{"question_id": "2016\n' + answer_line("201307251"), r"answers.jsonl:1 is not valid JSON\. Rerun"),
        (answer_line("999"), r"answers.jsonl:1 answers question '999', which gqa does not have"),
        ('{"text": "yes"}\n', r"answers.jsonl:1 has no 'question_id'"),
        ("[1, 2]\n", r"answers.jsonl:1 is a JSON list, expected an object"),
    ],
)  # fmt: skip
def test_bad_answers_files_name_file_and_line(root, tmp_path, content, message):
    path = tmp_path / "answers.jsonl"
    path.write_text(content)
    with pytest.raises(AnswersFileError, match=message):
        read_answers(str(path), get_benchmark("gqa"), gqa_keys(root))


def test_torn_last_line_is_reported_for_resume_and_valid_lines_without_newline_are_kept(root, tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(answer_line("201307251") + '{"question_id": "2016')
    answers = read_answers(str(path), get_benchmark("gqa"), gqa_keys(root), resume=True)
    assert list(answers.rows) == ["201307251"]
    assert answers.torn_tail == (str(path), len(answer_line("201307251")))
    # Another engine may end its file without a newline: still a complete answer.
    path.write_text(answer_line("201307251") + answer_line("201640614").rstrip("\n"))
    assert set(read_answers(str(path), get_benchmark("gqa"), gqa_keys(root)).rows) == {"201307251", "201640614"}


def test_integer_and_string_ids_match_and_textvqa_keys_include_the_prompt(root, tmp_path):
    from collections import Counter

    textvqa = get_benchmark("textvqa")
    questions = textvqa.load_questions(root, "val")
    # LLaVA's TextVQA question ids are image ids: two questions share "003a8ae2ef43b901".
    assert [q.row["question_id"] for q in questions].count("003a8ae2ef43b901") == 2
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(
        json.dumps({"question_id": q.row["question_id"], "prompt": q.row["prompt"], "text": "x", "model_id": "m"})
        + "\n" for q in questions
    ))  # fmt: skip
    answers = read_answers(str(path), textvqa, Counter(q.key for q in questions))
    assert len(answers.rows) == 3
    # POPE ids written as strings by another engine still match the integer ids of LLaVA's file.
    pope = get_benchmark("pope")
    pope_questions = pope.load_questions(root, "test")
    path.write_text(answer_line("1") + answer_line(2))
    assert set(read_answers(str(path), pope, Counter(q.key for q in pope_questions)).rows) == {"1", "2"}


def test_answers_of_another_model_are_refused_unless_forced(root, tmp_path):
    from recipes.eval.common import check_model_id

    path = tmp_path / "answers.jsonl"
    path.write_text(answer_line("201307251", model_id="llava-v1.5-7b") + answer_line("201640614", model_id="sq"))
    answers = read_answers(str(path), get_benchmark("gqa"), gqa_keys(root))
    with pytest.raises(AnswersFileError, match=r"mixes answers of several models: 'llava-v1.5-7b' \(1\), 'sq' \(1\)"):
        check_model_id(answers, None, str(path), force=False)
    with pytest.raises(AnswersFileError, match="not by 'sq'.*--force"):
        check_model_id(answers, "sq", str(path), force=False)
    check_model_id(answers, "sq", str(path), force=True)


def test_json_errors_name_the_file(tmp_path):
    from recipes.eval.common import read_json, read_jsonl

    (tmp_path / "empty.json").write_text("\n")
    with pytest.raises(ValueError, match=r"empty.json is empty; expected the X"):
        read_json(str(tmp_path / "empty.json"), "the X")
    (tmp_path / "lines.json").write_text('{"a": 1}\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"lines.json holds JSON Lines \(one object per line\) but the X is one"):
        read_json(str(tmp_path / "lines.json"), "the X")
    (tmp_path / "broken.json").write_text('{"a":\n 1,,}')
    with pytest.raises(ValueError, match=r"broken.json:2 is not valid JSON"):
        read_json(str(tmp_path / "broken.json"), "the X")
    (tmp_path / "q.jsonl").write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(ValueError, match=r"q.jsonl:3 is not valid JSON"):
        read_jsonl(str(tmp_path / "q.jsonl"), "the questions")
    with pytest.raises(ValueError, match=r"the questions not found: expected '.*nowhere.jsonl'"):
        read_jsonl(str(tmp_path / "nowhere.jsonl"), "the questions")


def test_missing_benchmark_files_name_the_expected_path(tmp_path):
    for name, expected in [
        ("gqa", "gqa/llava_gqa_testdev_balanced.jsonl"),
        ("scienceqa", "scienceqa/llava_test_CQM-A.json"),
        ("mmbench", "mmbench/mmbench_dev_20230712.tsv"),
        ("pope", "pope/llava_pope_test.jsonl"),
    ]:
        benchmark = get_benchmark(name)
        with pytest.raises(ValueError, match=f"expected '{tmp_path}/{expected}'"):
            benchmark.load_questions(str(tmp_path), benchmark.default_split)


def test_bad_question_records_name_file_and_line(tmp_path):
    path = tmp_path / "gqa" / "llava_gqa_testdev_balanced.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"question_id": "1", "image": "a.jpg", "text": "q"}\n{"question_id": "2", "image": "b.jpg"}\n')
    with pytest.raises(ValueError, match=r"llava_gqa_testdev_balanced.jsonl:2 has no 'text'"):
        get_benchmark("gqa").load_questions(str(tmp_path), "testdev_balanced")
    path.write_text('{"question_id": "1", "image": "a.jpg", "text": 7}\n')
    with pytest.raises(TypeError, match=r"llava_gqa_testdev_balanced.jsonl:1: 'text' is 7 \(int\)"):
        get_benchmark("gqa").load_questions(str(tmp_path), "testdev_balanced")


def test_chunks_are_llavas_get_chunk_and_keep_mmbench_rotations_together():
    """LLaVA: chunk_size = ceil(n / num_chunks), chunks = lst[i:i + chunk_size]."""
    import math

    def llava_chunks(items, n):
        size = math.ceil(len(items) / n)
        return [items[i : i + size] for i in range(0, len(items), size)]

    questions = [Question(key=str(i), text="t", image=None, row={}) for i in range(10)]
    for n in (1, 3, 4, 7):
        expected = llava_chunks([q.key for q in questions], n)
        for k in range(n):
            got = [q.key for q in chunk_questions(questions, n, k)]
            assert got == (expected[k] if k < len(expected) else [])
    # Rotations of one MMBench row are one unit: a chunk never splits them.
    rotated = [
        Question(key=(str(i), r), text="t", image=None, row={}, unit=str(i)) for i in range(3) for r in range(4)
    ]
    assert [q.key for q in chunk_questions(rotated, 2, 1)] == [("2", r) for r in range(4)]
    with pytest.raises(ValueError, match=r"--chunk-idx 2 must be in \[0, 2\)"):
        chunk_questions(questions, 2, 2)


def test_image_paths_cannot_leave_the_image_folder(tmp_path):
    from recipes.eval.answering import resolve_image_path

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    assert resolve_image_path(str(folder), "a.jpg") == (os.path.realpath(folder / "a.jpg"), None)
    assert resolve_image_path(str(folder), "../secret.jpg") == (None, "outside_image_folder")
    assert resolve_image_path(str(folder), str(tmp_path / "secret.jpg")) == (None, "outside_image_folder")
    assert resolve_image_path(str(folder), "b.jpg") == (None, "missing")


def test_model_id_is_llavas_model_name():
    from recipes.eval.answering import model_id_from_path

    assert model_id_from_path("outputs/sqllava-7b/") == "sqllava-7b"
    assert model_id_from_path("ZachSun/sqllava-lora-7b") == "sqllava-lora-7b"
    assert model_id_from_path("runs/llava-v1.5-7b/checkpoint-500") == "llava-v1.5-7b_checkpoint-500"


def test_xlsx_round_trip_and_cli_rejects_abbreviations(tmp_path, capsys):
    from recipes.eval.__main__ import build_parser
    from recipes.eval.mmbench import read_xlsx, write_xlsx

    path = tmp_path / "t.xlsx"
    write_xlsx(str(path), ["index", "text"], [[1, "a & <b>"], [1000000, None], [3, "ctrl\x01 汉字"]])
    assert read_xlsx(str(path)) == [["index", "text"], [1, "a & <b>"], [1000000], [3, "ctrl\x01 汉字"]]
    # allow_abbrev=False: a typo like --bench is not silently taken for --benchmark.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", "--bench", "gqa", "--eval-root", "r", "--answers", "a", "--output", "o"])
    assert "required: --benchmark" in capsys.readouterr().err


def test_images_are_decoded_as_llavas_scripts_decode_them(tmp_path):
    """LLaVA opens the file and converts to RGB (transparency dropped, not composited on white), also for MMBench's
    base64 images; a corrupt embedded image is skipped as unreadable."""
    import base64
    import io

    from PIL import Image

    from recipes.eval.answering import load_question_image

    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent, RGB underneath (10, 20, 30)
    rgba.save(tmp_path / "a.png")
    image, reason = load_question_image(Question(key="1", text="t", image="a.png", row={}), str(tmp_path))
    assert reason is None and image.mode == "RGB" and image.getpixel((0, 0)) == (10, 20, 30)
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    embedded = base64.b64encode(buffer.getvalue())
    image, reason = load_question_image(Question(key="2", text="t", image=embedded, row={}), None)
    assert reason is None and image.getpixel((3, 3)) == (10, 20, 30)
    assert load_question_image(Question(key="3", text="t", image=base64.b64encode(b"junk"), row={}), None) == (
        None,
        "unreadable",
    )


def test_group_accuracies_average_each_answer_type_and_leave_ungrouped_questions_out():
    from recipes.eval.vqa import group_accuracies

    questions = [Question(key=k, text="q", image=None, row={"question_id": k}) for k in "abcde"]
    scores = [1.0, 0.0, 0.9, 0.3, 1.0]
    # "e" has no answer type: it counts in the overall accuracy only, never in a group.
    groups = {"a": "yes/no", "b": "yes/no", "c": "other", "d": "Number", "e": None}
    assert group_accuracies(questions, scores, groups) == pytest.approx(
        {"accuracy_number": 0.3, "accuracy_other": 0.9, "accuracy_yes_no": 0.5}
    )
    assert group_accuracies(questions, scores, {}) == {}
