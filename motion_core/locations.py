"""Where the bundled files are: the embedded model and the example clips (no torch here: the app's page reads it
before torch has loaded).

An installed wheel carries the repository's ``assets/`` as package data, ``motion_core/assets`` (pyproject.toml
maps the folder there); a source checkout reads ``assets/`` in place.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_PACKAGED_ASSETS = Path(__file__).resolve().parent / "assets"
ASSETS_DIR = _PACKAGED_ASSETS if (_PACKAGED_ASSETS / "shapes-t2v").is_dir() else REPO_ROOT / "assets"
# The embedded default model; MOTION_MATCHER_MODEL overrides it (e.g. a Zeroscope folder on a GPU machine).
DEFAULT_MODEL_DIR = ASSETS_DIR / "shapes-t2v"
EXAMPLES_DIR = ASSETS_DIR / "examples"  # reference clips with captions (examples.json) for the app and the docs
