"""Where corrigo keeps what it builds once and reuses: converted models, embedding tables."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$CORRIGO_CACHE_DIR``, else ``$XDG_CACHE_HOME/corrigo``, else ``~/.cache/corrigo``."""
    root = (
        os.environ.get("CORRIGO_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "corrigo"
    )
    return Path(root)
