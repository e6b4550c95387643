"""The git commit the code runs from: what MLflow runs and container images record."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_revision(root: str | Path | None = None) -> str:
    """The git commit of the working tree at ``root`` (default: the current directory), ``+dirty`` when tracked
    files have changes; outside git the commit the container image was built from
    (``$IMAGE_EMOTION_GIT_REVISION``, set by docker/Dockerfile.*), else ``unknown``."""
    git = ["git"] if root is None else ["git", "-C", str(root)]
    try:
        rev = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("IMAGE_EMOTION_GIT_REVISION", "unknown")
    return rev + ("+dirty" if dirty else "")
