"""The single door to local weights: the embedded SmolLM2, any HF folder, any GGUF file.

The local oracle, the scorer and the trainer all load through here, so device, dtype and offline
rules are decided once. Importing it is cheap: torch and transformers are imported only inside
functions. The parts, one concept each:

- :mod:`~reflectune.models.source`: where weights are (the embedded GGUF, its converted copy) and
  their fingerprint; file system only;
- :mod:`~reflectune.models.runtime`: importing torch, picking the device and the dtype;
- :mod:`~reflectune.models.load`: ``from_pretrained`` of a model and its tokenizer;
- :mod:`~reflectune.models.embedded`: the embedded model's one-time conversion;
- :mod:`~reflectune.models.resolve`: a spec string to a source, and to a loaded model;
- :mod:`~reflectune.models.catalog`: what models this machine has, for ``reflectune models``.

Example::

    from reflectune.models import load_causal_lm

    model, tokenizer = load_causal_lm("embedded")
"""

from reflectune.models.embedded import ensure_embedded
from reflectune.models.load import load_tokenizer
from reflectune.models.resolve import load_causal_lm, resolve_model
from reflectune.models.runtime import cache_keyword, import_torch, pick_device, pick_dtype
from reflectune.models.source import EMBEDDED_NAME, ModelSource, model_fingerprint

__all__ = ["EMBEDDED_NAME", "ModelSource", "cache_keyword", "ensure_embedded", "import_torch",
           "load_causal_lm", "load_tokenizer", "model_fingerprint", "pick_device", "pick_dtype",
           "resolve_model"]
