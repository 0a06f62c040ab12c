"""GPT-ST mask autoencoder (GPTST_SPEC sections 1-4): config, fast and naive blocks, model."""

from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import (
    GPTST,
    GptstDecoder,
    GptstEncoder,
    GptstOutput,
    HyperStack,
    build_model,
)

__all__ = [
    "GPTST",
    "GptstConfig",
    "GptstDecoder",
    "GptstEncoder",
    "GptstOutput",
    "HyperStack",
    "build_model",
]
