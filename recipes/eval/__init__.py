"""Benchmark evaluation of SQ-LLaVA: `python -m recipes.eval answer|score|submit|run`.

Reads the files of LLaVA's evaluation bundle (`playground/data/eval/<benchmark>/...`, laid out as LLaVA's
docs/Evaluation.md describes) and gives the scores of the benchmarks' official scorers.

- `common.py`: files, questions, answers files, the benchmark registry, scoring (`score_answers`);
- `answering.py`: batched greedy answering into LLaVA-format answers files (`answer_benchmark`);
- one module per benchmark family: `vqa.py` (VQAv2, VizWiz, TextVQA), `gqa.py`, `pope.py`, `scienceqa.py`,
  `mmbench.py` (MMBench, MMBench-CN), `judged.py` (LLaVA-Bench-in-the-wild, MM-Vet), `shapes.py` (the synthetic
  data of the embedded default);
- `metrics/`: the official scoring rules as `evaluate` modules; `judge.py`: judge-model scoring;
- `paper.py`: the published 7B figures the `run` table prints beside the measured ones;
- `synthetic_root.py`: a tiny evaluation root in every format (tests, and the README's example).

>>> from recipes.eval.answering import answer_benchmark
>>> from recipes.eval.common import get_benchmark, score_answers
>>> answer_benchmark(model, processor, "gqa", "playground/data/eval", "answers/gqa.jsonl")  # doctest: +SKIP
>>> score_answers(get_benchmark("gqa"), "playground/data/eval", "answers/gqa.jsonl")["metrics"]  # doctest: +SKIP
{'accuracy': 0.637...}
"""
