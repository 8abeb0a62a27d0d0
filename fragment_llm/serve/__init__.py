"""Talking to a run's model: a conversation kept to its context (`fragment-llm chat`), and an
OpenAI-compatible HTTP server (`fragment-llm serve`) with its engine."""
