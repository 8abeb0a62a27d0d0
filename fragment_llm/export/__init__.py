"""Exports of a trained run: a Hugging Face folder (GPT-2, Llama, Qwen3 or our own code) and bare safetensors."""
