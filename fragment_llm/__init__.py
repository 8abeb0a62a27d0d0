"""Fragment LLM: train small GPT language models with plain PyTorch, configured with Hydra."""

__version__ = "0.1.0"
