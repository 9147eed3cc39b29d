"""The evaluation protocol and the retrieval check on a tiny model: smoke run, resume, protocol errors, table maths.

    OMP_WAIT_POLICY=PASSIVE nice -n 15 .venv/bin/python -m pytest tests/test_shapes_protocol.py -q

The tiny model (8 frames, 32 x 32) is untrained, so the scores themselves mean nothing here; these tests check
that every file is written, that a re-run continues instead of redoing work, and that the arithmetic is right.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shapes_world import protocol as P
from shapes_world import protocol_report
from shapes_world import retrieval_check as R

SPEC = {"shape": "circle", "colour": "red", "background": "plain", "bg_colour": "grey", "motion": "right",
        "seed": 3}


def _write(tmp_path, data, name="protocol.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _eval_args(model_dir, proto, out, seeds=1):
    return ["--protocol", str(proto), "--model", str(model_dir), "--device", "cpu", "--out", str(out),
            "--variants", "motion,ddpm", "--steps", "2", "--sample-steps", "2", "--seeds", str(seeds),
            "--rank", "4", "--no-clip", "--quiet"]


def test_eval_smoke_then_resume(tiny_model_dir, tmp_path):
    proto = _write(tmp_path, [{"name": "line", "reference": SPEC,
                               "prompts": ["a blue star on a dotted white background"]}])
    out = tmp_path / "eval"
    # The protocol may come first, as a positional.
    assert P.main([str(proto), *_eval_args(tiny_model_dir, proto, out)[2:]]) == 0
    rows = P.read_rows(out / "results.csv")
    assert sorted(r["variant"] for r in rows) == ["base", "ddpm", "motion", "oracle"]
    for r in rows:
        assert r["tracker"] in ("lk", "cotracker3") and r["reference_motion"] == "right"
        assert math.isfinite(float(r["motion_discrepancy"])) and r["text_metric"] == "detector"
        assert (out / r["video"]).is_file()
    # The rendered ground-truth transfer scores as a perfect sample should: the metrics' floor.
    oracle = next(r for r in rows if r["variant"] == "oracle")
    assert float(oracle["text_alignment"]) == 100.0 and float(oracle["trajectory_distance"]) < 0.1
    table = (out / "table.md").read_text()
    assert "Table 1" in table and "Table 2" in table and "`motion`" in table and "`ddpm`" in table
    assert (out / "alignment_vs_motion.png").stat().st_size > 1000
    loras = {v: out / "line" / v / "lora.safetensors" for v in ("motion", "ddpm")}
    mtimes = {v: p.stat().st_mtime_ns for v, p in loras.items()}

    # Same command again: nothing to do, nothing retrained, no row repeated.
    assert P.main(_eval_args(tiny_model_dir, proto, out)) == 0
    assert len(P.read_rows(out / "results.csv")) == 4
    # One more seed: only the new samples are made, from the stored LoRAs.
    assert P.main(_eval_args(tiny_model_dir, proto, out, seeds=2)) == 0
    rows = P.read_rows(out / "results.csv")
    assert len(rows) == 7 and sorted({int(r["seed"]) for r in rows}) == [0, 1]
    assert {v: p.stat().st_mtime_ns for v, p in loras.items()} == mtimes
    assert "(`motion`) | 1 | 2 |" in (out / "table.md").read_text()  # 1 pair, 2 samples per variant now
    # Back to one seed: the second seed's rows stay in the CSV but leave the table.
    assert P.main(_eval_args(tiny_model_dir, proto, out)) == 0
    assert len(P.read_rows(out / "results.csv")) == 7 and "(`motion`) | 1 | 1 |" in (out / "table.md").read_text()

    # Other training settings into the same folder are refused, not mixed in.
    args = _eval_args(tiny_model_dir, proto, out)
    args[args.index("--steps") + 1] = "3"
    assert P.main(args) == 2


@pytest.mark.parametrize("data, message", [
    ("[{not json", "not valid JSON"),
    ({"reference": "x"}, "non-empty JSON list"),
    ([], "non-empty JSON list"),
    ([{"reference": SPEC}], "'prompts' must be a non-empty list"),
    ([{"reference": SPEC, "prompts": ["ok", ""]}], "non-empty string"),
    ([{"reference": SPEC, "prompts": ["p"], "extra": 1}], "unknown key(s) ['extra']"),
    ([{"reference": {**SPEC, "shape": "hexagon"}, "prompts": ["p"]}], "shape 'hexagon' is not one of"),
    ([{"reference": {"shape": "circle", "colour": "red"}, "prompts": ["p"]}], "lacks ['motion']"),
    ([{"reference": {**SPEC, "colour": "white", "bg_colour": "white"}, "prompts": ["p"]}], "does not stand out"),
    ([{"reference": "missing.mp4", "caption": "c", "prompts": ["p"]}], "does not exist"),
    ([{"reference": 3, "prompts": ["p"]}], "must be a video path or a spec"),
    ([{"reference": SPEC, "prompts": ["p"], "name": "a"}, {"reference": SPEC, "prompts": ["q"], "name": "a"}],
     "used twice"),
    ([{"reference": SPEC, "prompts": ["p"], "name": "../up"}], "must be 1-64 letters"),
])
def test_protocol_parser_rejects_bad_files(tmp_path, data, message):
    with pytest.raises(P.ProtocolError) as err:
        P.load_protocol(str(_write(tmp_path, data)))
    assert message in str(err.value)
    assert "protocol.json" in str(err.value)  # the message names the file


def test_builtin_protocol_and_variants():
    refs = P.load_protocol("shapes6")
    assert len(refs) == 6 and all(len(r.prompts) == 3 for r in refs)
    assert len({r.spec["motion"] for r in refs}) == 6
    assert refs[0].caption == "a red circle on a plain grey background"
    assert P.parse_variants("motion-no-ca, ddpm") == ["motion-no-ca", "ddpm"]
    assert P.variant_loss("motion-no-tsa").lambda_tsa == 0 and P.variant_loss("motion-no-ca").lambda_ca == 0
    with pytest.raises(P.ProtocolError, match="unknown variant"):
        P.parse_variants("motion,vmc")


def test_aggregation_on_hand_made_csv(tmp_path):
    path = tmp_path / "results.csv"
    rows = [  # variant, reference, prompt, seed, motion discrepancy, colour ok
        ("motion", "a", "p1", 0, 1.0, 1), ("motion", "a", "p1", 1, 3.0, 0),  # pair mean 2, colour 50 %
        ("motion", "a", "p2", 0, 5.0, 1),  # pair mean 5, colour 100 %
        ("ddpm", "a", "p1", 0, 4.0, 0), ("ddpm", "b", "p1", 0, 8.0, ""),  # colour missing on one pair
    ]
    for v, ref, prompt, seed, md, ok in rows:
        P.append_row(path, {"variant": v, "reference": ref, "prompt": prompt, "seed": seed,
                            "motion_discrepancy": md, "colour_ok": None if ok == "" else ok})
    stats = P.aggregate(P.read_rows(path))
    md = stats["motion"]["motion_discrepancy"]
    assert md.mean == pytest.approx(3.5)  # mean of pair means (2 + 5) / 2, not of samples (3)
    assert md.sem == pytest.approx(1.5) and (md.pairs, md.samples) == (2, 3)
    assert stats["motion"]["colour_ok"].mean == pytest.approx(75.0)
    assert stats["ddpm"]["motion_discrepancy"].mean == pytest.approx(6.0)
    assert stats["ddpm"]["colour_ok"].mean == 0.0 and stats["ddpm"]["colour_ok"].pairs == 1
    table = P.format_table(stats, protocol_report.TABLE1)
    assert "3.5000 ± 1.5000" in table and "6.0000 ± 2.0000" in table
    assert table.index("`ddpm`") < table.index("`motion`")  # the paper's order: baselines first


def test_ground_truth_point_tracks_follow_the_scene():
    from shapes_world import world

    pan = world.render(world.make_spec("square", "red", "striped", "white", "pan_left", seed=1, frames=6,
                                       height=32, width=32))
    tr = R.gt_point_tracks(pan, grid=4)
    bg = ~pan.masks[0, 0, np.rint(tr[:, 0, 1]).astype(int), np.rint(tr[:, 0, 0]).astype(int)]
    shift = -(pan.camera - pan.camera[0])
    assert np.allclose(tr[bg] - tr[bg][:, :1], shift[None])  # background moves against the camera
    zoom = world.render(world.make_spec("circle", "red", motion="zoom_in", seed=1, frames=6, height=32, width=32))
    tz = R.gt_point_tracks(zoom, grid=8)
    on = np.linalg.norm(tz[:, 0] - zoom.centroids[0, 0], axis=1) < 0.5 * zoom.scales[0, 0]
    ratio = np.linalg.norm(tz[on, -1] - zoom.centroids[0, -1], axis=1) / np.linalg.norm(
        tz[on, 0] - zoom.centroids[0, 0], axis=1)
    assert np.allclose(ratio, zoom.scales[0, -1] / zoom.scales[0, 0])  # object points scale with the object


def test_retrieval_check_on_a_handful_of_clips(tiny_model):
    report = R.run_check(tiny_model, clips=12, t=500, grid=4)
    assert set(report.ap) == {key for key, _ in R.ROWS}
    assert all(0.0 <= v <= 1.0 for v in report.ap.values())
    text = R.format_report(report)
    assert "32.78" in text and "| M (CA + TSA maps) |" in text
    with pytest.raises(ValueError, match="at least two"):
        R.run_check(tiny_model, clips=1)


def _append_many(path, tag, n):
    for i in range(n):
        row = {"reference": tag, "variant": "motion", "prompt": "p", "seed": i, "text_metric": "detector"}
        P.append_row(path, row)


def test_two_processes_append_to_one_results_file(tmp_path):
    """Runs of different --references share a folder: one header, every row whole."""
    import multiprocessing as mp

    path = tmp_path / "results.csv"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, tag, 60)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = P.read_rows(path)
    assert len(rows) == 120
    assert sorted({(r["reference"], int(r["seed"])) for r in rows}) == sorted(
        (t, i) for t in ("a", "b") for i in range(60))
    assert path.read_text().count("reference,") == 1  # a single header line


def test_protocol_record_merges_runs_of_different_references(tmp_path):
    refs = P.load_protocol("shapes6")
    P.record_protocol(tmp_path, refs[:2])
    P.record_protocol(tmp_path, refs[2:3])
    P.record_protocol(tmp_path, refs[:1])  # a re-run of one already recorded: no duplicate
    names = [d["name"] for d in json.loads((tmp_path / "protocol.json").read_text())]
    assert names == [r.name for r in refs[:3]]
