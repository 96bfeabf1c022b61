"""Dataset files in and out: every supported format, streamed, checked, written back in kind.

The rest of reflectune sees only ``Sample`` streams and a writer: formats, shapes (Alpaca, ShareGPT),
field names and bad-row handling stop here. This package imports the standard library, pyarrow and
(for ``save_to_disk`` folders only) ``datasets``, the latter two lazily, and from reflectune only
``types`` and ``errors``.
"""

from reflectune.io.fields import CANONICAL, parse_fields, resolve_fields
from reflectune.io.formats import FORMATS, detect_format, output_format
from reflectune.io.readers import read_samples
from reflectune.io.rejects import RejectSink
from reflectune.io.writers import DatasetWriter, write_jsonl_atomic

__all__ = [
    "CANONICAL",
    "FORMATS",
    "DatasetWriter",
    "RejectSink",
    "detect_format",
    "output_format",
    "parse_fields",
    "read_samples",
    "resolve_fields",
    "write_jsonl_atomic",
]
