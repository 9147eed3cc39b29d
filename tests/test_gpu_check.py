"""benchmarks/gpu_check.py runs end to end (tiny model, CPU): every phase reports, the gradients agree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_gpu_check_runs_on_a_tiny_model(capsys):
    import gpu_check

    gpu_check.main(["--tiny", "--device", "cpu", "--frames", "4", "--size", "32", "--steps", "1",
                    "--sample-steps", "2"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    settings = [r for r in lines if "ratio" in r]
    assert [r["setting"] for r in settings] == ["fp32w-amp-nockpt", "halfw-amp-ckpt"]
    assert all(r["motion_s"] > 0 and r["ddpm_s"] > 0 for r in settings)
    phases = {r["phase"]: r for r in lines if "phase" in r}
    assert set(phases) == {"inversion", "sample+decode"} and phases["sample+decode"]["frames_shape"] == [4, 3, 32, 32]
    cos = [r["cosine_vs_fp32"] for r in lines if "cosine_vs_fp32" in r]
    assert len(cos) == 2 and min(cos) >= 0.99, cos  # half weights + fp32 extractor path vs all-fp32
