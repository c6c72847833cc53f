"""SQ-LLaVA processor, tokenizer and chat template (processing_sqllava.py, tokenization_sqllava.py and
chat_template.jinja are shipped to the Hub)."""

from .processing_sqllava import (
    CHAT_TEMPLATE,
    LLAVA_SYSTEM_PROMPT,
    SQ_SYSTEM_PROMPT,
    SQLlavaProcessor,
    add_sqllava_special_tokens,
    build_image_processor,
    load_image_rgb,
    render_conversation,
    validate_messages,
)
from .tokenization_sqllava import SQLlavaTokenizer


def _register() -> None:
    # AutoProcessor maps a config class to a processor class; the config lives in modeling_sqllava (not shipped
    # with this folder's remote code, and possibly absent in a processor-only checkout).
    try:
        from modeling_sqllava.configuration_sqllava import SQLlavaConfig
    except ImportError:
        return
    from transformers import AutoProcessor

    try:
        AutoProcessor.register(SQLlavaConfig, SQLlavaProcessor)
    except ValueError:  # already registered (module imported twice under different names)
        pass


_register()

__all__ = [
    "CHAT_TEMPLATE",
    "LLAVA_SYSTEM_PROMPT",
    "SQ_SYSTEM_PROMPT",
    "SQLlavaProcessor",
    "SQLlavaTokenizer",
    "add_sqllava_special_tokens",
    "build_image_processor",
    "load_image_rgb",
    "render_conversation",
    "validate_messages",
]
