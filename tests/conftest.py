"""Shared fixtures: tiny real diffusers/transformers components built in-process (no downloads)."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: with two processes on two cores (a test that starts the app as a
# subprocess), spinning threads starve each other and steps take 10-20 times longer. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("MM_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


@pytest.fixture
def tiny_model():
    from motion_core.testing import build_tiny_model

    return build_tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny model saved in Zeroscope's folder layout (for loader, CLI and app tests)."""
    from motion_core.models import save_model
    from motion_core.testing import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny-model")
    save_model(build_tiny_model(seed=0), folder)
    return folder
