"""The wheel, installed in a fresh virtualenv outside the repository, trains and samples with its embedded model.

Builds ``python -m pip wheel . -w dist`` (our package only), makes a new venv in a temporary folder, installs the
pinned torch and the wheel there (its other dependencies from the package index, as a user's pip would), and runs
``motion-matcher train <example> --steps 2`` and ``motion-matcher sample`` from that folder: nothing may come from
the checkout. About two minutes on the 2-core CI machine, most of it pip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    tail = f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{tail}"
    return res.stdout + res.stderr


def test_wheel_installs_outside_the_checkout_and_trains_and_samples_with_the_embedded_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MOTION_MATCHER_MODEL", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_PROGRESS_BAR="off", OMP_NUM_THREADS="1")
    # 1. The wheel: the library, the app and the assets; not the research harness, not the tests.
    # Built from a copy: setuptools' build/ folder in the checkout may hold files of an older build (a renamed
    # package), which a wheel built there would carry; and the build must not write into the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "jobs", "checkpoints", "tmp", "*.egg-info", "__pycache__",
        ".pytest_cache", ".ruff_cache"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(dist), "--no-deps", "-q"], tmp_path, env)
    (wheel,) = dist.glob("motion_matcher-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "motion_core/assets/shapes-t2v/unet/diffusion_pytorch_model.safetensors" in names
    assert "motion_core/assets/examples/examples.json" in names
    tops = {n.split("/")[0] for n in names if not n.startswith("motion_matcher-")}
    assert tops == {"motion_core", "motion_app"} or tops == {"motion_core", "app"}, tops
    assert not [n for n in names if n.startswith(("tests/", "shapes_world/", "motion_core/shapes/"))]
    # 2. A fresh venv outside the checkout; torch pinned first (a range would pull CUDA packages).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    torch_pin = re.search(r"^torch==\S+", (ROOT / "requirements.txt").read_text(), flags=re.M).group(0)
    _run([str(py), "-m", "pip", "install", "-q", torch_pin, str(wheel)], tmp_path, env)
    # 3. Train 2 steps on a bundled example clip, then sample, from a folder that is not the checkout.
    work = tmp_path / "user"
    work.mkdir()
    shutil.copy(ROOT / "assets" / "examples" / "bounce.mp4", work / "clip.mp4")
    mm = str(venv / "bin" / "motion-matcher")
    where = _run([str(py), "-c", "import motion_core.models as m; print(m.DEFAULT_MODEL_DIR)"], work, env)
    assert str(venv) in where and str(ROOT) not in where, where
    _run([mm, "train", "clip.mp4", "--caption", "a red circle on a plain white background", "--steps", "2",
          "--out", "run"], work, env)
    assert (work / "run" / "lora.safetensors").is_file()
    out = _run([mm, "sample", "--run", "run", "--prompt", "a blue square on a plain black background",
                "--steps", "2", "--seed", "1"], work, env)
    mp4s = sorted((work / "run" / "samples").glob("*.mp4"))
    assert [p.name for p in mp4s] == ["lora_seed1_beta0.3.mp4"], out
    assert mp4s[0].stat().st_size > 1000
