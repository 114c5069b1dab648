"""mtllora: MTL-LoRA and its baselines for Hugging Face models, and the paper's experiments."""

__version__ = "0.1.0"
