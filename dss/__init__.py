"""dss: dynamic safety shaping (STAR-DSS) for safe LLM finetuning, in JAX."""

__version__ = "0.1.0"
