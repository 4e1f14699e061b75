"""The base model: pre-trained here, converted from a packaged GGUF, or taken from HF."""
