"""Turn a trained SQ-LLaVA into a Hub repo: model card, push (export and conversion live beside them).

Only light modules are imported here, so `python -m hub_upload.push --dry-run` works without loading torch.
"""

from .model_card import render_model_card
from .push import PlannedFile, plan_upload, push_folder

__all__ = ["PlannedFile", "plan_upload", "push_folder", "render_model_card"]
