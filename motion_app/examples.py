"""The bundled reference clips the page offers (``assets/examples/``), read defensively: a broken index or a name
that leads out of the folder gives fewer examples, never an error."""

from __future__ import annotations

import json

from motion_core.locations import EXAMPLES_DIR


def examples() -> list[dict[str, str]]:
    """Bundled reference clips: ``assets/examples/examples.json`` lists ``{"file": ..., "caption": ...}``
    entries (or maps file -> caption). Missing files or folder: no examples, no error."""
    index = EXAMPLES_DIR / "examples.json"
    try:
        raw = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = None
    if isinstance(raw, dict) and isinstance(raw.get("examples"), list):
        raw = raw["examples"]
    if isinstance(raw, dict):
        raw = [{"file": k, "caption": v} for k, v in raw.items()]
    entries = []
    if isinstance(raw, list):
        for e in raw:
            if not isinstance(e, dict):
                continue
            name = e.get("file") or e.get("video") or e.get("path") or ""
            path = (EXAMPLES_DIR / str(name)).resolve()
            if path.parent == EXAMPLES_DIR.resolve() and path.is_file():  # no paths out of the folder
                label = e.get("name") or (f"{path.stem} ({e['motion']})" if e.get("motion") else path.stem)
                entries.append({"name": str(label), "path": str(path),
                                "caption": str(e.get("caption", "")), "prompt": str(e.get("prompt", ""))})
    elif EXAMPLES_DIR.is_dir():  # no index: every clip, without a caption
        entries = [{"name": p.stem, "path": str(p), "caption": "", "prompt": ""}
                   for p in sorted(EXAMPLES_DIR.glob("*.mp4"))]
    return entries
