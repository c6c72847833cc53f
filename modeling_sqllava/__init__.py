"""SQ-LLaVA as a transformers model. Importing this package registers it with the Auto classes.

>>> import modeling_sqllava  # noqa: F401
>>> from transformers import AutoModelForImageTextToText
>>> model = AutoModelForImageTextToText.from_config(modeling_sqllava.SQLlavaConfig())  # doctest: +SKIP
"""

import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_sqllava import SQLlavaConfig
from .modeling_sqllava import (
    SQLlavaForConditionalGeneration,
    SQLlavaModel,
    SQLlavaMultiModalProjector,
    SQLlavaPreTrainedModel,
    SQLlavaPrototypeExtractor,
    SQLlavaVisionTower,
)

AutoConfig.register(SQLlavaConfig.model_type, SQLlavaConfig, exist_ok=True)
AutoModel.register(SQLlavaConfig, SQLlavaModel, exist_ok=True)
AutoModelForImageTextToText.register(SQLlavaConfig, SQLlavaForConditionalGeneration, exist_ok=True)
# transformers 4.x name of the image-text-to-text Auto class; removed in 5.x.
if hasattr(transformers, "AutoModelForVision2Seq"):
    transformers.AutoModelForVision2Seq.register(SQLlavaConfig, SQLlavaForConditionalGeneration, exist_ok=True)

__all__ = [
    "SQLlavaConfig",
    "SQLlavaForConditionalGeneration",
    "SQLlavaModel",
    "SQLlavaMultiModalProjector",
    "SQLlavaPreTrainedModel",
    "SQLlavaPrototypeExtractor",
    "SQLlavaVisionTower",
]
