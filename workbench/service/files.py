"""Files the workbench keeps only for a while: uploads in `<home>/imports` and model exports.

An import that a stored run starts from (its `init_from`) stays as long as that run does, since a
resume or a restart reads it again; everything else goes once it is older than the age given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from workbench.paths import exports_dir, imports_dir

logger = logging.getLogger(__name__)


def clean_old_files(home: Path, max_age_s: float, in_use: Iterable[Path], now: float | None = None) -> list[Path]:
    """Delete exports and imports last modified more than `max_age_s` ago, except `in_use`; returns them."""
    cutoff = (time.time() if now is None else now) - max_age_s
    keep = {Path(path).resolve() for path in in_use}
    removed = []
    for folder in (exports_dir(home), imports_dir(home)):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and path.resolve() not in keep and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        logger.info("removed %d upload(s) and export(s) older than %.0f hours", len(removed), max_age_s / 3600)
    return removed
