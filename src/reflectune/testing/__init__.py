"""Test helpers shipped with reflectune: a loopback OpenAI-compatible server and its canned answers.

Names resolve lazily, so that ``python -m reflectune.testing.server`` does not import the server module
twice and importing this package costs nothing until a helper is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ServerHandle", "ServerOptions", "respond", "running_server"]

_WHERE = {
    "ServerHandle": "reflectune.testing.server",
    "ServerOptions": "reflectune.testing.server",
    "respond": "reflectune.testing.responder",
    "running_server": "reflectune.testing.server",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
