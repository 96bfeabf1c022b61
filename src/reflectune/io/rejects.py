"""Where skipped rows go, so that skipping loses nothing.

With ``on_bad_record="skip"`` a bad row is not dropped but appended to ``rejects.jsonl`` with its row
number, field, reason and the record itself (raw text when it could not be parsed), one line each,
flushed as it is written. The file is opened on the first reject, so a clean run leaves no empty file
behind, and it is appended to, so a resumed run adds to the same file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any


class RejectSink:
    """Appends ``{"row", "field", "reason", "record"}`` JSON lines to ``path``; ``count`` counts them.

    Example:
        >>> with RejectSink(run_dir / "rejects.jsonl") as rejects:
        ...     samples = list(read_samples("data.jsonl", on_bad_record="skip", rejects=rejects))
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._file: IO[str] | None = None

    def add(self, row: int | None, field: str | None, reason: str, record: Any) -> None:
        """Record one rejected row; ``record`` is the parsed record or the raw text."""
        entry = {"row": row, "field": field, "reason": reason, "record": record}
        try:
            line = json.dumps(entry, ensure_ascii=False, default=str)
            line.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: escape them rather than fail
            line = json.dumps(entry, ensure_ascii=True, default=str)
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across calls
        self._file.write(line + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RejectSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
