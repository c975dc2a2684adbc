"""Small data files written for this project and shipped with it, and the one function that
finds them: prompts (training and held-out), demonstrations, red-team prompts and the default
constitution.

    from alignloop.assets import asset
    asset("prompts_train.jsonl")         # a Path inside the installed package

Recipes write the folder as `{assets}` (`asset_dir()`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def asset_dir() -> Path:
    """The folder that holds the shipped data files."""
    return Path(str(files(__name__)))


def asset(name: str) -> Path:
    """Path of a shipped data file, e.g. `asset("constitution.yaml")`."""
    return asset_dir() / name
