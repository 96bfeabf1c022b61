"""The local HF/GGUF oracle: a worker thread that batches requests, decodes, and forces the format."""
