"""MMBench and MMBench-CN: the official TSVs (`mmbench/mmbench_dev_20230712.tsv`, `mmbench/mmbench_dev_cn_20231003.tsv`;
columns index, question, hint, A-D, answer, category, l2-category, ..., image as base64).

Prompts as LLaVA's `model_vqa_mmbench.py --single-pred-prompt --all-rounds` builds them: hint (when present) + "\\n"
+ question, then "\\nA. option" per option present, then "\\nAnswer with the option's letter from the given choices
directly." (MMBench-CN: "\\n请直接回答选项字母。"). Every rotation of the options is asked (round r shows the options
shifted by r, still lettered A, B, ...), so circular accuracy (a question counts only when all its rotations are
right, as the MMBench server scores) is measured locally. Cells count as empty exactly as LLaVA's pandas reading makes
them (pandas' default NA strings, and "nan"/"none" in any case): an option list stops at the first empty option.

Scored with VLMEvalKit's rule-based option matcher (no LLM) in the `mmbench` metric; questions are grouped by
`index % 1_000_000`, as VLMEvalKit groups the rotated copies that MMBench's own TSVs carry. `submit` writes the
server's xlsx as LLaVA's `scripts/convert_mmbench_for_submission.py` does (the TSV without hint, category, source,
image, comment and l2-category, a `prediction` column in 7th place), with a stdlib xlsx writer.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import zipfile
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar
from xml.sax.saxutils import escape

from recipes.eval.common import (
    MULTIPLE_CHOICE_SUFFIX,
    MULTIPLE_CHOICE_SUFFIX_CN,
    Benchmark,
    Question,
    ScoreResult,
    check_model_id,
    compute_metric,
    predictions_and_missing,
    question_key,
    read_answers,
    register,
    require_file,
)

LETTERS = ("A", "B", "C", "D")
# pandas.read_table's default NA strings (pandas._libs.parsers.STR_NA_VALUES): LLaVA reads the TSV with pandas, so
# a cell holding one of these is empty for it.
PANDAS_NA_STRINGS = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
     "NULL", "NaN", "None", "n/a", "nan", "null"]
)  # fmt: skip
CIRCULAR_BASE = 1_000_000
# Columns convert_mmbench_for_submission.py drops before adding `prediction` at position 6.
SUBMISSION_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")


def is_none(value: str | None) -> bool:
    """LLaVA's `is_none` on a cell as pandas would have read it."""
    return value is None or value in PANDAS_NA_STRINGS or value.lower() in ("nan", "none")


def read_tsv(path: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """`(header, [(line number, {column: cell})])` of an MMBench TSV (quoted cells as pandas reads them)."""
    require_file(path, "the MMBench TSV")
    previous = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's 128 KiB default
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if not header:
                raise ValueError(f"{path} is empty; expected an MMBench TSV with a header line.")
            for column in ("index", "question", "A", "B"):
                if column not in header:
                    raise ValueError(f"{path} has no {column!r} column (columns: {header}).")
            rows = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise ValueError(f"{path}:{reader.line_num} has {len(row)} cells, the header {len(header)}.")
                rows.append((reader.line_num, dict(zip(header, row))))
    finally:
        csv.field_size_limit(previous)
    return header, rows


@register
class MMBench(Benchmark):
    name = "mmbench"
    title = "MMBench"
    lang = "en"
    files: ClassVar[dict[str, str]] = {"dev": "mmbench_dev_20230712.tsv", "test": "mmbench_test_20230712.tsv"}
    splits = ("dev", "test")
    default_split = "dev"
    scored_splits = ("dev",)
    submit_splits = ("dev", "test")
    max_new_tokens = 1024  # model_vqa_mmbench.py
    headline = "circular_accuracy"
    metric_label = "circular accuracy"

    def question_file(self, root, split):
        path = os.path.join(root, "mmbench", self.files[split])
        # LLaVA's scripts/v1_5/eval/mmbench_cn.sh reads it from mmbench_cn/ while its docs put it in mmbench/.
        other = os.path.join(root, "mmbench_cn", self.files[split])
        return other if not os.path.isfile(path) and os.path.isfile(other) else path

    def image_folder(self, root, split):
        return None  # the images are in the TSV

    def answer_key(self, row: Mapping[str, Any], where: str) -> Hashable:
        round_id = row.get("round_id", 0)
        if not isinstance(round_id, int) or isinstance(round_id, bool):
            raise TypeError(f"'round_id' is {round_id!r}; it must be an integer (the rotation of the options).")
        return (question_key(row["question_id"]), round_id)

    def load_questions(
        self, root, split, question_file=None, all_rounds: bool | None = True, keep_images: bool = True, **options
    ):
        """The questions of every TSV row (every rotation unless `all_rounds=False`); `keep_images=False` leaves the
        images out (scoring and upload files do not need them)."""
        path = question_file or self.question_file(root, split)
        _, rows = read_tsv(path)
        suffix = MULTIPLE_CHOICE_SUFFIX_CN if self.lang == "cn" else MULTIPLE_CHOICE_SUFFIX
        # VLMEvalKit's TSVs store an image once: a rotated copy's cell holds the index of the row with the image.
        images = {row["index"]: row.get("image", "") for _, row in rows}
        questions = []
        for number, row in rows:
            where = f"{path}:{number}"
            image = row.get("image", "")
            if 0 < len(image) <= 64 and image in images:
                image = images[image]
            # One bytes object shared by the row's rotations (an MMBench TSV holds a few hundred MB of base64).
            image = image.encode("ascii", "replace") if keep_images else b""
            try:
                index = int(row["index"])
            except ValueError:
                raise ValueError(f"{where}: index {row['index']!r} is not an integer.") from None
            options = []
            for letter in LETTERS:
                if letter not in row or is_none(row[letter]):
                    break
                options.append(row[letter])
            if not options:
                raise ValueError(f"{where}: no option (column A is empty).")
            answer = row.get("answer")
            letters = list(LETTERS[: len(options)])
            if answer is not None and not is_none(answer) and answer not in letters:
                raise ValueError(f"{where}: answer {answer!r} is not one of the options {letters}.")
            rounds = len(options) if all_rounds is not False else 1
            for round_id in range(rounds):
                shown = options[round_id:] + options[:round_id]
                option_char = letters[round_id:] + letters[:round_id]
                question = row["question"]
                hint = row.get("hint")
                if not is_none(hint):
                    question = hint + "\n" + question
                for letter, option in zip(letters, shown):
                    question = question + "\n" + letter + ". " + option
                reference = None
                if answer is not None and not is_none(answer):
                    reference = letters[option_char.index(answer)]
                questions.append(
                    Question(
                        key=(question_key(index), round_id),
                        text=question + "\n" + suffix,
                        image=image,
                        row={
                            "question_id": index,
                            "round_id": round_id,
                            "prompt": question,
                            "options": shown,
                            "option_char": option_char,
                        },
                        unit=question_key(index),
                        source=f"{where} (round {round_id})",
                        info={
                            "reference": reference,
                            "options": dict(zip(letters, shown)),
                            "group": str(index % CIRCULAR_BASE),
                        },
                    )
                )
        return questions

    def load_for_scoring(self, root, split, files, question_file, force, all_rounds: bool | None = None, **options):
        """All rounds, or only round 0 when asked (`all_rounds=False`) or when the answers hold round 0 only."""
        questions = self.load_questions(root, split, question_file=question_file, all_rounds=True, keep_images=False)
        answers = read_answers(files, self, Counter(q.key for q in questions))
        check_model_id(answers, None, files, force)
        notes = []
        if all_rounds is None and answers.rows and all(round_id == 0 for _, round_id in answers.rows):
            all_rounds = False
            notes.append(
                "The answers hold round 0 only (LLaVA's model_vqa_mmbench.py without --all-rounds): scored on the "
                "TSV's rows as they are; circular accuracy then comes from the rotated copies the TSV itself holds "
                "(index >= 1,000,000), if any."
            )
        if all_rounds is False:
            questions = [q for q in questions if q.key[1] == 0]
        return questions, answers, notes

    def score(self, root, split, questions, answers, **options):
        if any(q.info["reference"] is None for q in questions):
            raise ValueError(
                f"The {split} TSV has no 'answer' column: MMBench {split} is scored by its server; use `submit`."
            )
        answered, missing = predictions_and_missing(questions, answers)
        scored = answered + missing
        result = compute_metric(
            "mmbench",
            [answers[q.key]["text"] if q.key in answers else "" for q in scored],
            [q.info["reference"] for q in scored],
            options=[q.info["options"] for q in scored],
            groups=[q.info["group"] for q in scored],
        )
        return ScoreResult(
            metrics={"circular_accuracy": result["circular_accuracy"], "accuracy": result["accuracy"]},
            per_question={str(k): float(v) for k, v in result["circular_per_question"].items()},
            num_questions=len(scored),
            num_answered=len(answered),
            num_missing=len(missing),
            missing_policy="wrong",
            extra={"num_circular_groups": len(result["circular_per_question"])},
        )

    def write_submission(self, root, split, questions, answers, output):
        header, rows = read_tsv(self.question_file(root, split))
        # convert_mmbench_for_submission.py keeps, for each index, the text of the last answer row it reads; with
        # --all-rounds that is a rotated order of the options, so the upload takes round 0, the TSV's own order.
        predictions = {key[0]: row["text"] for key, row in answers.items() if key[1] == 0}
        columns = [c for c in header if c not in SUBMISSION_DROPPED]
        columns.insert(min(6, len(columns)), "prediction")
        table = []
        for _, row in rows:
            cells = []
            for column in columns:
                if column == "prediction":
                    cells.append(predictions.get(question_key(int(row["index"]))))
                elif column == "index":
                    cells.append(int(row["index"]))
                else:
                    cells.append(None if is_none(row[column]) else row[column])
            table.append(cells)
        write_xlsx(output, columns, table)
        return {"questions": len(rows), "answered": sum(c[columns.index("prediction")] is not None for c in table)}


@register
class MMBenchCN(MMBench):
    name = "mmbench_cn"
    title = "MMBench-CN"
    lang = "cn"
    files: ClassVar[dict[str, str]] = {"dev": "mmbench_dev_cn_20231003.tsv", "test": "mmbench_test_cn_20231003.tsv"}


# ----------------------------------------------------------------------------------------------------------------------
# A minimal xlsx writer (one sheet, inline strings), so the upload file needs no openpyxl.
# ----------------------------------------------------------------------------------------------------------------------


def _column_name(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        name = chr(65 + remainder) + name
    return name


def _xml_text(value: str) -> str:
    # Characters XML 1.0 forbids are written as Excel's _xHHHH_ escapes (openpyxl would refuse them).
    out = []
    for ch in value:
        code = ord(ch)
        if code < 0x20 and ch not in "\t\n\r" or 0xFFFE <= code <= 0xFFFF or 0xD800 <= code <= 0xDFFF:
            out.append(f"_x{code:04X}_")
        else:
            out.append(ch)
    return escape("".join(out))


def write_xlsx(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]], sheet: str = "Sheet1") -> None:
    """Write a one-sheet Office Open XML workbook: strings as inline strings, ints/floats as numbers, None empty."""
    lines = ['<?xml version="1.0" encoding="UTF-8" standalone="yes"?>',
             '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>']  # fmt: skip
    for r, values in enumerate([list(header), *rows], start=1):
        cells = []
        for c, value in enumerate(values):
            ref = f"{_column_name(c)}{r}"
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                text = _xml_text(str(value))
                cells.append(f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{text}</t></is></c>')
            else:
                cells.append(f'<c r="{ref}"><v>{value!r}</v></c>')
        lines.append(f'<row r="{r}">{"".join(cells)}</row>')
    lines.append("</sheetData></worksheet>")
    parts = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            "</Types>"
        ),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" '
            'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
            'Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
            'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
            f'<sheets><sheet name="{escape(sheet)}" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" '
            'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" '
            'Target="worksheets/sheet1.xml"/></Relationships>'
        ),
        "xl/worksheets/sheet1.xml": "".join(lines),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in parts.items():
            archive.writestr(name, content)
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(temporary, path)


def read_xlsx(path: str) -> list[list[Any]]:
    """Rows of the first sheet of a workbook written by [`write_xlsx`] (inline strings and numbers; for tests and
    for checking an upload file by eye)."""
    import re
    from xml.etree import ElementTree

    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(path) as archive:
        root = ElementTree.fromstring(archive.read("xl/worksheets/sheet1.xml"))
    table = []
    for row in root.findall(".//m:row", ns):
        values: dict[int, Any] = {}
        for cell in row.findall("m:c", ns):
            letters = re.match(r"[A-Z]+", cell.get("r")).group(0)
            column = 0
            for ch in letters:
                column = column * 26 + ord(ch) - 64
            if cell.get("t") == "inlineStr":
                text = "".join(t.text or "" for t in cell.findall(".//m:t", ns))
                values[column - 1] = re.sub(r"_x([0-9A-F]{4})_", lambda m: chr(int(m.group(1), 16)), text)
            else:
                raw = cell.find("m:v", ns).text
                values[column - 1] = int(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)
        width = max(values) + 1 if values else 0
        table.append([values.get(i) for i in range(width)])
    return table
