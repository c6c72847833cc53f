"""Turn a trained SQ-LLaVA into a Hub repo: export (merge + verify), conversion of the released checkpoints, model
card, push; `safety` says what may be published.

Names are imported lazily (PEP 562): `from hub_upload import push_folder` works, while `python -m hub_upload.push`
finds no half-imported `hub_upload.push` in `sys.modules` (runpy's RuntimeWarning) and loads neither torch nor
huggingface_hub before it needs them.
"""

from importlib import import_module

_EXPORTS = {
    "PlannedFile": "push",
    "UploadRefusedError": "push",
    "plan_upload": "push",
    "push_folder": "push",
    "render_model_card": "model_card",
}

__all__ = ["PlannedFile", "UploadRefusedError", "plan_upload", "push_folder", "render_model_card"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
