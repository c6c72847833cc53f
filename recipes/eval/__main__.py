"""`python -m recipes.eval answer|score|submit|run`: SQ-LLaVA on the benchmarks of the paper, as the paper ran them.

The evaluation root is laid out as LLaVA's docs/Evaluation.md lays out `playground/data/eval` (LLaVA's eval.zip plus
the official annotation files it points to). Benchmarks: vqav2, gqa, vizwiz, scienceqa, textvqa, pope, mmbench,
mmbench_cn, llava_bench, mmvet (and shapes, the synthetic data of `python -m recipes.run_tiny`).

    # answer (resumable; one process per GPU with --num-chunks/--chunk-idx), then score with no model loaded
    python -m recipes.eval answer --benchmark pope --eval-root playground/data/eval --model outputs/sqllava-7b \\
        --answers answers/pope.jsonl --batch-size 16
    python -m recipes.eval score --benchmark pope --eval-root playground/data/eval --answers answers/pope.jsonl \\
        --output answers/pope.score.json
    # the upload file of an evaluation server (VQAv2 / VizWiz on EvalAI, MMBench)
    python -m recipes.eval submit --benchmark vqav2 --eval-root playground/data/eval \\
        --answers answers/vqav2.jsonl --output upload/vqav2-test-dev.json
    # everything, with the paper's table beside the measured numbers
    python -m recipes.eval run --benchmarks all --eval-root playground/data/eval --model outputs/sqllava-7b \\
        --out outputs/eval
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from recipes.eval.answering import answer_benchmark, format_answer_table, model_id_from_path
from recipes.eval.common import (
    CONV_MODES,
    all_benchmarks,
    format_score_table,
    get_benchmark,
    percent,
    read_answers,
    score_answers,
    write_json,
)
from recipes.eval.paper import PAPER_7B, PAPER_COLUMNS, SOURCES, TABLE_ORDER

logger = logging.getLogger("recipes.eval")
SUBMISSION_SUFFIX = {"mmbench": ".xlsx", "mmbench_cn": ".xlsx"}


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def _root_arguments(parser: argparse.ArgumentParser, benchmark_required: bool = True) -> None:
    if benchmark_required:
        parser.add_argument("--benchmark", required=True, help=f"One of: {', '.join(sorted(all_benchmarks()))}.")
        parser.add_argument("--split", default=None, help="Split (default: the one the papers report).")
        parser.add_argument("--question-file", default=None, help="Replace the benchmark's question file.")
    parser.add_argument("--eval-root", required=True, help="The folder laid out as LLaVA's playground/data/eval.")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    from recipes.loading import DTYPES, add_trust_remote_code_argument

    parser.add_argument("--model", required=True, help="Folder or Hub id of an SQ-LLaVA model (and its processor).")
    parser.add_argument("--batch-size", type=int, default=8, help="Prompts per generate call (left-padded).")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="Default: LLaVA's script's budget (128; 1024 for scienceqa, mmbench, llava_bench, mmvet).",
    )
    parser.add_argument("--conv-mode", default="v1", help=f"Prompt format: {' or '.join(CONV_MODES)} (the same).")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N questions (a quick check).")
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    parser.add_argument("--attn-implementation", default=None, help="sdpa, eager, flash_attention_2, ...")
    parser.add_argument("--model-id", default=None, help="The model_id of the answers (default: the folder name).")
    parser.add_argument("--force", action="store_true", help="Reuse answers written under another model_id.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    add_trust_remote_code_argument(parser)


def _judge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint (llava_bench, mmvet).")
    parser.add_argument("--judge-model", default=None, help="Judge model name, e.g. gpt-4-0613.")
    parser.add_argument(
        "--judge-api-key-env", default="OPENAI_API_KEY", help="Environment variable holding the judge's API key."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    answer = commands.add_parser("answer", help="Answer a benchmark into an answers file.", allow_abbrev=False)
    _root_arguments(answer)
    _model_arguments(answer)
    answer.add_argument("--answers", required=True, help="Answers jsonl (appended to; answered questions skipped).")
    answer.add_argument("--image-folder", default=None, help="Replace the benchmark's image folder.")
    answer.add_argument("--num-chunks", type=int, default=1, help="Split the questions into chunks (one per GPU).")
    answer.add_argument("--chunk-idx", type=int, default=0, help="The chunk this process answers.")
    answer.add_argument(
        "--all-rounds",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="MMBench: ask every rotation of the options (LLaVA's --all-rounds; needed for circular accuracy).",
    )

    score = commands.add_parser("score", help="Score answers files (no model loaded).", allow_abbrev=False)
    _root_arguments(score)
    score.add_argument("--answers", required=True, nargs="+", help="Answers jsonl file(s), e.g. the chunks of a run.")
    score.add_argument("--output", required=True, help="Score JSON to write.")
    score.add_argument("--limit", type=int, default=None, help="Score only the first N questions.")
    score.add_argument("--force", action="store_true", help="Score answers of several model_ids together.")
    score.add_argument(
        "--all-rounds",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="MMBench: expect every rotation (default: as the answers file holds them).",
    )
    _judge_arguments(score)

    submit = commands.add_parser("submit", help="Write an evaluation server's upload file.", allow_abbrev=False)
    _root_arguments(submit)
    submit.add_argument("--answers", required=True, nargs="+", help="Answers jsonl file(s).")
    submit.add_argument("--output", required=True, help="Upload file to write (.json; .xlsx for MMBench).")
    submit.add_argument("--force", action="store_true", help="Accept answers of several model_ids.")

    run = commands.add_parser("run", help="Answer + score several benchmarks; table beside the papers'.",
                              allow_abbrev=False)  # fmt: skip
    run.add_argument("--benchmarks", required=True, nargs="+", help="Benchmark names, or `all` (the paper's ten).")
    _root_arguments(run, benchmark_required=False)
    _model_arguments(run)
    run.add_argument("--out", required=True, help="Output folder: <benchmark>/answers.jsonl, score.json, table.")
    run.add_argument(
        "--splits", nargs="*", default=[], metavar="BENCHMARK=SPLIT", help="Other splits, e.g. vqav2=val vizwiz=val."
    )
    _judge_arguments(run)
    return parser


# ----------------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------------


def _load_model(args):
    from recipes.loading import load_model_and_processor

    return load_model_and_processor(
        args.model,
        trust_remote_code=args.trust_remote_code,
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn_implementation,
    )


def _judge_options(args, score_file: str) -> dict[str, Any]:
    """The judge settings, and the verdict cache beside `score_file`: the judge's verdicts are appended to it as they
    come, so a rerun does not pay twice."""
    return {
        "judge_url": args.judge_url,
        "judge_model": args.judge_model,
        "judge_api_key_env": args.judge_api_key_env,
        "judge_cache": os.path.splitext(score_file)[0] + ".judge.jsonl",
    }


def command_answer(args) -> dict[str, Any]:
    from recipes.eval.answering import check_conv_mode

    check_conv_mode(args.conv_mode)
    benchmark = get_benchmark(args.benchmark)
    model, processor = _load_model(args)
    report = answer_benchmark(
        model,
        processor,
        benchmark,
        args.eval_root,
        args.answers,
        split=args.split,
        question_file=args.question_file,
        image_folder=args.image_folder,
        num_chunks=args.num_chunks,
        chunk_idx=args.chunk_idx,
        limit=args.limit,
        all_rounds=args.all_rounds,
        conv_mode=args.conv_mode,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        model_id=args.model_id or model_id_from_path(args.model),
        force=args.force,
        progress=not args.no_progress,
    )
    print(format_answer_table(report))
    return report.as_dict()


def command_score(args) -> dict[str, Any]:
    benchmark = get_benchmark(args.benchmark)
    options: dict[str, Any] = {"all_rounds": args.all_rounds} if args.all_rounds is not None else {}
    if benchmark.needs_judge:
        options.update(_judge_options(args, args.output))
    result = score_answers(
        benchmark,
        args.eval_root,
        args.answers,
        split=args.split,
        question_file=args.question_file,
        limit=args.limit,
        force=args.force,
        **options,
    )
    write_json(args.output, result)
    print(format_score_table(result))
    print(f"wrote {args.output}")
    return result


def submission(benchmark, eval_root: str, split: str | None, answers_files, output: str, *, question_file=None,
               force: bool = False) -> dict[str, Any]:  # fmt: skip
    """Write the upload file of `benchmark`'s evaluation server from answers files; returns its counts."""
    from collections import Counter

    from recipes.eval.common import check_model_id

    split = benchmark.resolve_split(split)
    if split not in benchmark.submit_splits:
        raise ValueError(
            f"{benchmark.name} {split} has no evaluation-server upload file"
            + (f" (uploads exist for --split {', '.join(benchmark.submit_splits)})" if benchmark.submit_splits else "")
            + "; score it locally with `score`."
        )
    questions = benchmark.load_questions(eval_root, split, question_file=question_file, keep_images=False)
    answers = read_answers(answers_files, benchmark, Counter(q.key for q in questions))
    check_model_id(answers, None, answers_files, force)
    info = benchmark.write_submission(eval_root, split, questions, answers.rows, output)
    return {"benchmark": benchmark.name, "split": split, "output": output, **info}


def command_submit(args) -> dict[str, Any]:
    benchmark = get_benchmark(args.benchmark)
    info = submission(
        benchmark,
        args.eval_root,
        args.split,
        args.answers,
        args.output,
        question_file=args.question_file,
        force=args.force,
    )
    print(f"{benchmark.name} {info['split']}: {info['answered']} of {info['questions']} questions answered; "
          f"wrote {args.output}")  # fmt: skip
    return info


def _parse_splits(pairs: Sequence[str]) -> dict[str, str]:
    splits = {}
    for pair in pairs:
        name, sep, split = pair.partition("=")
        if not sep or not name or not split:
            raise ValueError(f"--splits {pair!r} must look like BENCHMARK=SPLIT, e.g. vqav2=val.")
        splits[name] = split
    return splits


def command_run(args) -> dict[str, Any]:
    from recipes.eval.answering import check_conv_mode

    check_conv_mode(args.conv_mode)
    names = list(TABLE_ORDER) if args.benchmarks == ["all"] else args.benchmarks
    benchmarks = [get_benchmark(name) for name in names]
    splits = _parse_splits(args.splits)
    unknown = set(splits) - set(names)
    if unknown:
        raise ValueError(f"--splits names {sorted(unknown)}, which --benchmarks does not run.")
    plan = []
    # Every question file is read before the model is loaded: a missing file fails in seconds, not hours later.
    for benchmark in benchmarks:
        split = benchmark.resolve_split(splits.get(benchmark.name))
        benchmark.load_questions(args.eval_root, split, keep_images=False)
        plan.append((benchmark, split))
    model, processor = _load_model(args)
    model_id = args.model_id or model_id_from_path(args.model)
    rows = []
    for benchmark, split in plan:
        folder = os.path.join(args.out, benchmark.name)
        answers_file = os.path.join(folder, "answers.jsonl")
        report = answer_benchmark(
            model,
            processor,
            benchmark,
            args.eval_root,
            answers_file,
            split=split,
            limit=args.limit,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            model_id=model_id,
            force=args.force,
            progress=not args.no_progress,
        )
        print(format_answer_table(report))
        row: dict[str, Any] = {"benchmark": benchmark.name, "split": split, "answer": report.as_dict()}
        if split in benchmark.submit_splits:
            upload = os.path.join(folder, "upload" + SUBMISSION_SUFFIX.get(benchmark.name, ".json"))
            try:
                row["upload"] = submission(benchmark, args.eval_root, split, answers_file, upload, force=args.force)
            except ValueError as error:  # e.g. VizWiz test needs every answer: say so in the table, keep going
                row["upload_error"] = str(error)
        if split in benchmark.scored_splits:
            score_file = os.path.join(folder, "score.json")
            options = _judge_options(args, score_file) if benchmark.needs_judge else {}
            if benchmark.needs_judge and not args.judge_url:
                row["score_error"] = "needs a judge: --judge-url and --judge-model"
            else:
                try:
                    result = score_answers(
                        benchmark, args.eval_root, answers_file, split=split, limit=args.limit, force=args.force,
                        **options,
                    )  # fmt: skip
                except (ValueError, TypeError, RuntimeError) as error:
                    # A missing annotation file or a failing judge must not lose the other benchmarks' table: the
                    # answers are on disk, `score` can be rerun alone.
                    row["score_error"] = f"not scored: {error}"
                    print(f"{benchmark.name}: {row['score_error']}", file=sys.stderr)
                else:
                    write_json(score_file, result)
                    print(format_score_table(result))
                    row["score"] = result
        rows.append(row)
    table = results_table(rows, model_id)
    summary = {"model": args.model, "model_id": model_id, "eval_root": args.eval_root, "benchmarks": rows}
    write_json(os.path.join(args.out, "results.json"), summary)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print()
    print(table)
    return summary


def results_table(rows: Sequence[dict[str, Any]], model_id: str) -> str:
    """The markdown table of `run`: the measured headline metric beside the papers' 7B figures."""
    lines = [
        f"| Benchmark | Split | Metric | {model_id} | {PAPER_COLUMNS[0]} | {PAPER_COLUMNS[1]} | Answered |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        benchmark = get_benchmark(row["benchmark"])
        answer = row["answer"]
        answered = answer["num_generated"] + answer["num_resumed"]
        cell_answered = f"{answered}/{answer['num_questions']}"
        if answer["skipped"]:
            cell_answered += " (skipped images: " + ", ".join(f"{k} {v}" for k, v in answer["skipped"].items()) + ")"
        if "score" in row:
            value = row["score"]["metrics"].get(benchmark.headline)
            measured = percent(value)
            if row["score"]["counts"]["missing"]:
                measured += f" ({row['score']['counts']['missing']} missing)"
        elif "score_error" in row:  # the full message is in results.json
            measured = row["score_error"].replace("|", "/")[:160]
        elif "upload" in row:
            measured = f"server: upload {row['upload']['output']}"
        else:
            measured = row.get("upload_error", "not scored")
        paper = PAPER_7B.get(benchmark.name)
        papers = (f"{paper[0]:.1f}", f"{paper[1]:.1f}") if paper else ("-", "-")
        lines.append(
            f"| {benchmark.title} | {row['split']} | {benchmark.metric_label} | {measured} | {papers[0]} | "
            f"{papers[1]} | {cell_answered} |"
        )
    lines.append("")
    lines.append("Paper columns are the published figures (" + "; ".join(SOURCES) + "), not measured here.")
    return "\n".join(lines)


COMMANDS = {"answer": command_answer, "score": command_score, "submit": command_submit, "run": command_run}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError) as error:  # bad files or arguments: one clear line (SQLLAVA_DEBUG=1: traceback)
        if os.environ.get("SQLLAVA_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
