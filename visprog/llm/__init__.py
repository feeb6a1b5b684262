"""One client layer for language models: OpenAI-compatible servers and local transformers models."""
