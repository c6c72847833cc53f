"""Benchmark evaluation of SQ-LLaVA: `python -m recipes.eval answer|score|submit|run`.

Reads the files of LLaVA's evaluation bundle (`playground/data/eval/<benchmark>/...`, laid out as LLaVA's
docs/Evaluation.md describes) and gives the scores of the benchmarks' official scorers.
"""
