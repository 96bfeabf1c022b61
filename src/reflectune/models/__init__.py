"""The single door to local weights: the embedded SmolLM2, any HF folder, any GGUF file.

The local oracle, the scorer and the trainer all load through here, so device, dtype and offline
rules are decided once.
"""
