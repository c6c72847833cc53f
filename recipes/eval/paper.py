"""The published 7B figures `python -m recipes.eval run` prints beside its own: they come from the papers' tables, they
are not measured by this package.

- SQ-LLaVA-7B: Sun et al., "SQ-LLaVA: Self-Questioning for Large Vision-Language Assistant" (ECCV 2024,
  arXiv:2403.11299), the 7B row of the authors' model zoo, heliossun/SQ-LLaVA docs/MODEL_ZOO.md at commit e4baa2f
  (the figures issue 10 quotes: VQAv2 and VizWiz on their test-dev servers, ScienceQA on its IMG subset, POPE the
  mean F1 of its three splits, MMBench / MMBench-CN dev on the MMBench server, LLaVA-Bench-in-the-wild and MM-Vet
  judged by GPT-4).
- LLaVA-1.5-7B: Liu et al., "Improved Baselines with Visual Instruction Tuning" (CVPR 2024, arXiv:2310.03744), as
  LLaVA's model zoo lists liuhaotian/llava-v1.5-7b (haotian-liu/LLaVA docs/MODEL_ZOO.md at commit c121f04; the
  arXiv table itself could not be read offline here).
"""

from __future__ import annotations

# benchmark name -> (SQ-LLaVA-7B, LLaVA-1.5-7B), in percent as the tables print them.
PAPER_7B: dict[str, tuple[float, float]] = {
    "vqav2": (80.3, 78.5),
    "gqa": (63.7, 62.0),
    "vizwiz": (55.3, 50.0),
    "scienceqa": (70.5, 66.8),
    "textvqa": (60.5, 58.2),
    "pope": (87.2, 85.9),
    "mmbench": (66.6, 64.3),
    "mmbench_cn": (60.0, 58.3),
    "llava_bench": (74.3, 65.4),
    "mmvet": (37.6, 31.1),
}
PAPER_COLUMNS = ("SQ-LLaVA-7B (paper)", "LLaVA-1.5-7B (paper)")
SOURCES = (
    "SQ-LLaVA-7B: arXiv:2403.11299, heliossun/SQ-LLaVA docs/MODEL_ZOO.md (e4baa2f)",
    "LLaVA-1.5-7B: arXiv:2310.03744, haotian-liu/LLaVA docs/MODEL_ZOO.md (c121f04)",
)
# The order of the papers' tables.
TABLE_ORDER = tuple(PAPER_7B)
