"""One Flax NNX decoder for the Hugging Face families dss supports, with HF import/export."""

from dss.models.checkpoint import llama_config, load_pretrained, save_pretrained, save_random_llama
from dss.models.config import FAMILIES, ModelConfig
from dss.models.transformer import KVCache, Transformer

__all__ = ["FAMILIES", "KVCache", "ModelConfig", "Transformer", "llama_config", "load_pretrained", "save_pretrained",
           "save_random_llama"]
