"""Promises the repository makes to a new user: README commands, CI, pins, asset sizes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_app_and_test_commands_and_ci_runs_the_test_command():
    app_cmd, test_cmd = _readme_commands()[:2]
    assert "app.py" in app_cmd and "requirements.txt" in app_cmd
    assert "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci, "the README's test command must appear verbatim in .ci/run"


def test_torch_is_pinned_exactly_and_torchvision_is_not_used():
    req = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", req, flags=re.M)
    assert "torchvision" not in req
    for py in (ROOT / "motion_core").rglob("*.py"):
        assert "import torchvision" not in py.read_text(), py


def test_library_never_imports_the_ui():
    for py in (ROOT / "motion_core").rglob("*.py"):
        src = py.read_text()
        ui = r"^\s*(import gradio|from gradio|from app|import app\b|from motion_app|import motion_app)"
        assert not re.search(ui, src, flags=re.M), py


def test_assets_stay_small():
    total = sum(p.stat().st_size for p in (ROOT / "assets").rglob("*") if p.is_file())
    assert total < 50 * 2**20, f"assets/ is {total / 2**20:.1f} MB (limit 50 MB)"


# The app: Gradio only in the layout (ui), the page's events (page) and the endpoints (api); the work in plain
# modules of at most MAX_APP_LINES lines each.
APP_GRADIO_MODULES = frozenset({"ui.py", "page.py", "api.py"})
MAX_APP_LINES = 400


def test_every_app_module_is_short():
    sizes = {py.name: len(py.read_text().splitlines()) for py in (ROOT / "motion_app").glob("*.py")}
    assert {"service.py", "jobs.py", "store.py", "runner.py", "worker.py"} <= set(sizes)
    long = {name: n for name, n in sizes.items() if n >= MAX_APP_LINES}
    assert not long, f"split these app modules (each under {MAX_APP_LINES} lines): {long}"


def test_the_apps_work_never_imports_gradio():
    import subprocess
    import sys

    plain = sorted(py.stem for py in (ROOT / "motion_app").glob("*.py")
                   if py.name not in APP_GRADIO_MODULES and py.name != "__init__.py")
    assert {"service", "settings", "jobs", "store", "runner", "worker", "media"} <= set(plain)
    for name in plain:
        src = (ROOT / "motion_app" / f"{name}.py").read_text()
        ui = r"^\s*(import gradio|from gradio|from \.(api|page|ui) |from \. import (api|page|ui))"
        assert not re.search(ui, src, flags=re.M), name
    # Imported, not only read: none of them pulls Gradio in through another module.
    code = (f"import sys; import {', '.join('motion_app.' + n for n in plain)}; "
            "sys.exit(1 if any(m == 'gradio' or m.startswith('gradio.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0, "Gradio was imported"
