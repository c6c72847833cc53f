"""Training recipes for SQ-LLaVA: data loading, synthetic data, trainer and entry points."""
