"""GPT-ST mask autoencoder (GPTST_SPEC): config, fast and naive blocks, model, adaptive masker,
losses, the pre-training objective and the self-contained encoder bundle."""

from gptst.models.gptst.bundle import EncoderBundle, check_compatible, load_encoder, save_encoder_bundle
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.masker import AdaptiveMasker
from gptst.models.gptst.model import (
    GPTST,
    GptstDecoder,
    GptstEncoder,
    GptstOutput,
    HyperStack,
    build_model,
)
from gptst.models.gptst.objective import PretrainObjective

__all__ = [
    "GPTST",
    "AdaptiveMasker",
    "EncoderBundle",
    "GptstConfig",
    "GptstDecoder",
    "GptstEncoder",
    "GptstOutput",
    "HyperStack",
    "PretrainObjective",
    "build_model",
    "check_compatible",
    "load_encoder",
    "save_encoder_bundle",
]
