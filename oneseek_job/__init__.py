"""oneseek-job: train LoRA adapters per base model and publish them with provenance."""

__all__ = ["__version__"]

__version__ = "0.1.0"
