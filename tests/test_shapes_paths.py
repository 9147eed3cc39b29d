"""The second shapes world (``shapes_world/paths.py``) and the transfer ladder on it.

Ground truth first: the renderer's centroids, colours and shapes are what the detector reads back, the training
stream never draws a held-out family, a restyled clip keeps its path. Then the ladder runs end to end on an
untrained model (every rung present) and its summary's ratios are checked on hand-made rows.
"""

from __future__ import annotations

import collections
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from motion_core.models import save_model
from shapes_world import detector, ladder, paths, recipe, world


def test_paths_world_is_deterministic_and_of_the_promised_vocabulary():
    a = list(paths.iter_dataset(6, seed=3))
    b = list(paths.iter_dataset(3, seed=3, first=3))
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(a[3:], b))  # clip i depends on (seed, i) only
    assert a[0].frames.shape == (paths.FRAMES, paths.SIZE, paths.SIZE, 3)
    # the minimum vocabulary: colours, shapes, plain white / grey / black backgrounds
    assert {"red", "blue", "green", "yellow", "white", "black"} <= set(paths.COLOURS)
    assert {"circle", "square", "triangle", "star"} <= set(paths.SHAPES)
    assert {"white", "grey", "black"} <= set(paths.BG_COLOURS) and "plain" in paths.BACKGROUNDS
    for clip in a:
        assert clip.caption == paths.caption(clip.spec)
        assert set(clip.caption.split()) <= set(paths.VOCABULARY)
        got = paths.parse(clip.caption)
        o = clip.spec.objects[0]
        assert (got["shape"], got["colour"], got["bg_colour"]) == (o.shape, o.colour, clip.spec.bg_colour)


def test_recoloured_captions_name_the_colours_the_copies_show():
    import torch

    from motion_core.train import RECOLOURINGS, recolour_caption, recolourings

    names = paths.colour_names()
    obj_rgb, bg_rgb = ({k: np.array(v, float) for k, v in names[t].items()} for t in ("", "background"))
    named = 0
    for colour in paths.COLOURS:
        for bgc in paths.BG_COLOURS:
            if not paths.compatible(colour, bgc):
                continue
            clip = paths.render(paths.make_spec("square", colour, "plain", bgc, "static", seed=1))
            frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255
            inside = clip.masks.any(axis=0)[0]
            for (perm, inv), copy in zip(RECOLOURINGS, recolourings(frames), strict=True):
                got = recolour_caption(clip.caption, perm, inv, names)
                if got is None:
                    continue
                named += 1
                assert set(got.split()) <= set(paths.VOCABULARY), got
                px = copy[0].permute(1, 2, 0).numpy() * 255
                o, b = np.median(px[inside], axis=0), np.median(px[~inside], axis=0)
                want = paths.parse(got)  # the colour each name stands for is the nearest to what the copy shows
                assert min(obj_rgb, key=lambda k: np.linalg.norm(obj_rgb[k] - o)) == want["colour"], (got, o)
                assert min(bg_rgb, key=lambda k: np.linalg.norm(bg_rgb[k] - b)) == want["bg_colour"], (got, b)
    assert named >= 100  # most of the world's looks have several nameable copies


def test_detector_reads_back_the_ground_truth():
    clips = list(paths.iter_dataset(60, seed=11))
    errors, colour_ok, shape_ok, coherent = [], 0, 0, 0
    for clip in clips:
        tr = detector.track(clip.frames)
        errors.append(np.abs(tr.centroids - clip.centroids[0]).max())
        o = clip.spec.objects[0]
        colour_ok += tr.colour == o.colour
        shape_ok += tr.shape == o.shape
        coherent += tr.coherent
    assert max(errors) < 0.5  # px: the object never leaves the frame and its centre is read to sub-pixel
    assert colour_ok == len(clips) and coherent == len(clips)
    assert shape_ok >= 0.95 * len(clips)


def test_training_stream_draws_every_family_and_never_a_held_out_one():
    rng = np.random.default_rng(0)
    drawn = collections.Counter(paths.family_of(paths.sample_spec(rng)) for _ in range(400))
    assert set(drawn) == set(paths.FAMILIES)
    assert not set(drawn) & set(paths.HELD_OUT)
    # motion is continuous, not a list: no two curve clips share a path
    starts = {tuple(np.round(paths.render(paths.sample_spec(rng, family="curve")).centroids[0, -1], 3))
              for _ in range(30)}
    assert len(starts) == 30


@pytest.mark.parametrize("family", [*paths.FAMILIES, *paths.HELD_OUT])
@pytest.mark.parametrize("size", ["medium", paths.MAX_SIZE])
def test_every_family_moves_inside_the_frame(family, size):
    for seed in range(4):
        bg = "striped" if family == "pan" else "plain"
        clip = paths.render(paths.make_spec("star", "red", bg, "white", family, seed=seed, size=size))
        c, r = clip.centroids[0], clip.scales[0]
        assert (c - 0.8 * r[:, None] >= -1).all() and (c + 0.8 * r[:, None] <= paths.SIZE).all()
        moved = np.linalg.norm(c - c[0], axis=1).max() + np.abs(np.log(r / r[0])).max() * paths.SIZE
        assert (moved > 2.0) == (family != "static")  # every family but static visibly moves or zooms


def test_a_size_is_a_name_or_a_radius_fraction():
    side = float(paths.SIZE)
    for size, frac in [*paths.SIZES.items(), (0.15, 0.15), (paths.MAX_SIZE, paths.MAX_SIZE)]:
        spec = paths.make_spec("square", "red", size=size, family="static")
        assert spec.objects[0].radius == pytest.approx(frac * side * world.SHAPE_SCALE["square"])
    spec = paths.sample_spec(np.random.default_rng(0), shape="star", size=0.15)
    assert spec.objects[0].radius == pytest.approx(0.15 * side * world.SHAPE_SCALE["star"])
    for bad in ("huge", 0.0, -0.1, paths.MAX_SIZE + 0.01):
        with pytest.raises(ValueError, match="size"):
            paths.make_spec("square", "red", size=bad)


def test_pan_moves_the_background_and_restyle_keeps_the_path():
    clip = paths.render(paths.make_spec("square", "yellow", "striped", "grey", "pan", seed=2))
    bg_first, bg_last = clip.frames[0][~clip.masks[0, 0]], clip.frames[-1][~clip.masks[0, -1]]
    assert clip.camera[-1].any() and not np.array_equal(clip.frames[0], clip.frames[-1])
    assert bg_first.shape != bg_last.shape or not np.array_equal(bg_first, bg_last)
    other = paths.render(paths.restyle(clip.spec, "circle", "blue", "plain", "white"))
    assert np.allclose(other.centroids, clip.centroids)  # the same path, in frame coordinates
    assert other.caption == "a blue circle on a plain white background"
    with pytest.raises(ValueError, match="stand out"):
        paths.restyle(clip.spec, "circle", "black", "plain", "black")
    with pytest.raises(ValueError, match="textured"):
        paths.make_spec("square", "red", "plain", "white", "pan")
    with pytest.raises(ValueError, match="unknown path family"):
        paths.make_spec("square", "red", family="loop-the-loop")


def test_first_world_still_renders_its_own_colours():
    # black joined the renderer's colours for the second world; the first world's sampling set is unchanged
    assert "black" not in world.COLOURS and world.OBJECT_RGB["black"]
    clip = world.render(world.make_spec("circle", "red", motion="right", seed=0, frames=4))
    assert detector.track(clip.frames).colour == "red"


def _untrained_model(tmp_path: Path) -> Path:
    """A fresh paths-world model (recipe's architecture, random weights) saved in ``tmp_path / "m"``."""
    save_model(recipe.build_model(0), tmp_path / "m")
    return tmp_path / "m"


def test_ladder_runs_every_rung_on_an_untrained_model(tmp_path, monkeypatch):
    model_dir = _untrained_model(tmp_path)
    out = tmp_path / "ladder"
    cmd = ["--model", str(model_dir), "--out", str(out), "--refs", "6", "--prompts", "1", "--seeds", "1",
           "--steps", "2", "--sample-steps", "2", "--set", "sample.lora_cutoff=250", "--baselines", "ddpm,residual",
           "--l1-set", "train.steps=3", "--l1-set", "loss.t_min=400"]
    ladder.main(cmd + ["--threads", "1"])
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    got = {(r["rung"], r["variant"], r["beta"]) for r in rows}
    assert got == {("L0", "oracle", 0.0), ("L1", "lora", 0.0), ("L1", "base", 0.0), ("L2", "lora", 0.0),
                   ("L3", "lora", 0.0), ("L3", "base", 0.0), ("L3", "lora", 0.3), ("L3", "base", 0.3),
                   ("L3", "ddpm", 0.0), ("L3", "ddpm", 0.3), ("L3", "residual", 0.0), ("L3", "residual", 0.3)}
    assert len(rows) == 12  # the base model is sampled once per cell, not again beside each baseline
    # L1 / L2 have their own DDPM LoRA, trained as --l1-set says; L3's ddpm baseline keeps the product's settings
    assert sorted(p.name for p in (out / "ref6").iterdir() if p.name != "cache") == ["ddpm", "ddpm-l1", "motion",
                                                                                      "residual"]
    logs = {n: [json.loads(x) for x in (out / "ref6" / n / "train_log.jsonl").read_text().splitlines()]
            for n in ("ddpm", "ddpm-l1")}
    assert len(logs["ddpm"]) == 2 and len(logs["ddpm-l1"]) == 3 and min(r["t"] for r in logs["ddpm-l1"]) >= 400
    assert all(isinstance(r["shape_ok"], bool) for r in rows)
    assert all(r["shape_ok"] == (r["shape"] == paths.parse(r["prompt"])["shape"]) for r in rows)
    # the same settings again (other threads): nothing is redone; other settings on this folder are refused
    stamp = (out / "ref6" / "motion").stat().st_mtime_ns
    ladder.main(cmd + ["--threads", "2"])
    assert (out / "ref6" / "motion").stat().st_mtime_ns == stamp
    assert len((out / "rows.jsonl").read_text().splitlines()) == 12
    with pytest.raises(SystemExit, match="other settings"):
        ladder.main(cmd[:-2] + ["--seeds", "2"])
    with pytest.raises(SystemExit, match="other settings"):  # the L1 LoRA's training is part of what L1 means
        ladder.main(cmd[:-4] + ["--l1-set", "train.steps=4"])
    with pytest.raises(SystemExit, match="L1 LoRA's training only"):
        ladder.main(cmd + ["--l1-set", "sample.lora_cutoff=0"])
    # More seeds for the finished ladder: its reference folder copied into a new --out; the LoRAs are reused (a
    # checkpoint at its last step, resumed: not one step trained again) and only the new seed is sampled.
    more = tmp_path / "more"
    shutil.copytree(out / "ref6", more / "ref6")
    phases: dict[str, list[str]] = {}
    real_train = ladder.train_lora

    def train_watched(model, frames, caption, run_dir, cfg, **kw):
        seen = phases.setdefault(Path(run_dir).name, [])
        return real_train(model, frames, caption, run_dir, cfg, callback=lambda p: seen.append(p.phase), **kw)

    monkeypatch.setattr(ladder, "train_lora", train_watched)
    ladder.main(["--model", str(model_dir), "--out", str(more), *cmd[4:], "--first-seed", "1"])
    assert set(phases) == {"ddpm-l1", "motion", "ddpm", "residual"}
    assert all("training" not in seen and seen[0] == "resuming" for seen in phases.values()), phases
    more_rows = [json.loads(x) for x in (more / "rows.jsonl").read_text().splitlines()]
    assert len(more_rows) == 12 and {r["seed"] for r in more_rows if r["rung"] != "L0"} == {1}
    # a LoRA another ladder trained with other settings is not resumed: trained from the start
    other = tmp_path / "other"
    shutil.copytree(out / "ref6", other / "ref6")
    phases.clear()
    ladder.main(["--model", str(model_dir), "--out", str(other), *cmd[4:], "--set", "train.learning_rate=1e-3"])
    assert "resuming" not in phases["motion"] and phases["motion"].count("training") == 2
    assert json.loads((other / "ref6" / "motion" / "config.json").read_text())["train"]["learning_rate"] == 1e-3
    # the two ladders pooled: seeds 0 and 1 in every cell, the oracle's row (seed 0 in both) once
    merged = tmp_path / "merged"
    ladder.main(["--merge", str(out), str(more), "--out", str(merged)])
    pooled = [json.loads(x) for x in (merged / "rows.jsonl").read_text().splitlines()]
    assert len(pooled) == 23 and sum(r["rung"] == "L0" for r in pooled) == 1
    summary = json.loads((merged / "summary.json").read_text())
    assert summary["all"]["groups"]["L3 lora beta=0.3"]["n"] == 2
    # every command run on each folder: the ladder's two runs (threads 1, then 2) and the more-seeds run
    src = summary["sources"]
    assert len(src) == 3 and src[0].endswith("--threads 1") and src[1].endswith("--threads 2")
    assert src[2].endswith("--first-seed 1")
    assert summary["settings"]["l1_train"]["train"]["steps"] == 3
    assert (merged / "ref6" / "motion" / "lora.safetensors").read_bytes() == (
        out / "ref6" / "motion" / "lora.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="not empty"):
        ladder.main(["--merge", str(out), str(more), "--out", str(merged)])
    # a rung trained another way replaces that rung only (LADDER:RUNGS), with its own LoRA folder
    l1b = tmp_path / "l1b"
    ladder.main(["--model", str(model_dir), "--out", str(l1b), *cmd[4:16], "--rungs", "L1",
                 "--l1-set", "train.steps=4", "--l1-set", "loss.t_min=400"])
    with pytest.raises(SystemExit, match="other l1_set"):
        ladder.main(["--merge", str(out), str(l1b), "--out", str(tmp_path / "m4")])
    ladder.main(["--merge", f"{out}:L3", str(l1b), "--out", str(tmp_path / "m4")])
    m4 = [json.loads(x) for x in (tmp_path / "m4" / "rows.jsonl").read_text().splitlines()]
    assert collections.Counter(r["rung"] for r in m4) == {"L0": 1, "L1": 2, "L3": 8}  # no L2: not asked for
    assert len((tmp_path / "m4" / "ref6" / "ddpm-l1" / "train_log.jsonl").read_text().splitlines()) == 4
    assert json.loads((tmp_path / "m4" / "summary.json").read_text())["settings"]["l1_train"]["train"]["steps"] == 4
    tampered = tmp_path / "tampered"
    shutil.copytree(more, tampered)
    lines = (tampered / "rows.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["rung"] == "L0"  # the oracle's row, which both folders hold
    lines[0] = json.dumps({**first, "distance": first["distance"] + 0.01})
    (tampered / "rows.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match="disagree"):
        ladder.main(["--merge", str(out), str(tampered), "--out", str(tmp_path / "m3")])
    older = tmp_path / "older"  # a ladder from before rows recorded the drawn shape: merges, the fuller row kept
    shutil.copytree(more, older)
    lines = [json.loads(x) for x in (older / "rows.jsonl").read_text().splitlines()]
    (older / "rows.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "shape"}) + "\n"
                                              for r in lines))
    ladder.main(["--merge", str(older), str(out), "--out", str(tmp_path / "m5")])
    m5 = [json.loads(x) for x in (tmp_path / "m5" / "rows.jsonl").read_text().splitlines()]
    assert len(m5) == 23 and next(r for r in m5 if r["rung"] == "L0")["shape"] == first["shape"]
    with pytest.raises(SystemExit, match="other set"):  # another learning rate: rows that mean something else
        ladder.main(["--merge", str(out), str(other), "--out", str(tmp_path / "m2")])
    save_model(recipe.build_model(1), model_dir)  # other weights in the same folder
    with pytest.raises(SystemExit, match="other settings"):
        ladder.main(cmd)
    with pytest.raises(SystemExit, match="unknown variant"):
        ladder.main(cmd[:-2] + ["--baselines", "dpo"])
    with pytest.raises(SystemExit, match="indices run from 0 to 9"):
        ladder.main(["--model", str(model_dir), "--out", str(out), "--refs", "12"])
    assert all(r["held_out"] for r in rows)  # reference 6 is a held-out family
    oracle = [r for r in rows if r["rung"] == "L0"]
    assert oracle[0]["distance"] < 0.02 and oracle[0]["colour_ok"]  # the world redraws the path exactly
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["sample"]["lora_cutoff"] == 250 and summary["settings"]["train"]["train"]["steps"] == 2
    l1 = summary["settings"]["l1_train"]
    assert l1["train"]["steps"] == 3 and l1["loss"]["t_min"] == 400
    # the product rung samples with the model's (here the --set) cut-off; L1 and L2 keep the LoRA on throughout
    assert {r["lora_cutoff"] for r in rows if r["rung"] == "L3"} == {250}
    assert {r["lora_cutoff"] for r in rows if r["rung"] in ("L1", "L2")} == {0}
    assert (out / "ladder.md").read_text().startswith("# Transfer ladder")
    with pytest.raises(SystemExit):
        ladder.apply_overrides(ladder.RunConfig(), ladder.SampleConfig(), ["train.no_such_setting=1"])


def test_one_change_prompts_differ_from_the_own_caption_in_one_attribute_each():
    from shapes_world import diagnose

    for i, (shape, colour, _, bgc, *_rest) in enumerate(ladder.REFERENCES):
        p = {k: paths.parse(v) for k, v in diagnose.one_change(i).items()}
        assert p["own"]["shape"] == shape and p["own"]["colour"] == colour and p["own"]["bg_colour"] == bgc
        for kind, key in (("colour", "colour"), ("shape", "shape"), ("background", "bg_colour")):
            changed = {k for k in ("shape", "colour", "bg_colour") if p[kind][k] != p["own"][k]}
            assert changed == {key}, (i, kind)
            assert p[kind]["colour"] != p[kind]["bg_colour"]  # the object stands out


def test_holds_samples_a_ladder_s_motion_loras_under_changed_prompts(tmp_path):
    from shapes_world import diagnose

    model_dir = _untrained_model(tmp_path)
    out = tmp_path / "ladder"
    ladder.main(["--model", str(model_dir), "--out", str(out), "--refs", "2", "--prompts", "1", "--seeds", "1",
                 "--steps", "1", "--sample-steps", "2", "--rungs", "L3", "--betas", "0", "--threads", "1"])
    model = ladder.load_model(str(model_dir))
    rows = diagnose.holds(model, out, seeds=1)
    assert {(r["kind"], r["lora"]) for r in rows} == {(k, u) for k in ("own", "colour", "shape", "background")
                                                       for u in (True, False)}
    assert {r["ref"] for r in rows} == {2} and all(0 <= r["distance"] or r["distance"] != r["distance"] for r in rows)
    assert not diagnose.holds(model, tmp_path / "empty")
    with pytest.raises(SystemExit, match="no motion LoRA"):
        diagnose.main(["--model", str(model_dir), "--holds", str(tmp_path / "empty")])


def test_ladder_samples_one_lora_at_several_cutoffs(tmp_path):
    model_dir = _untrained_model(tmp_path)
    out = tmp_path / "ladder"
    base = ["--model", str(model_dir), "--out", str(out), "--refs", "0", "--prompts", "1", "--seeds", "1",
            "--steps", "2", "--sample-steps", "3", "--rungs", "L3", "--betas", "0", "--threads", "1"]
    seen = []
    real_sample = ladder.sample
    with pytest.MonkeyPatch.context() as mp:  # --sample-steps and --guidance reach every draw and the summary
        mp.setattr(ladder, "sample", lambda m, p, cfg, **kw: seen.append(cfg) or real_sample(m, p, cfg, **kw))
        ladder.main(base + ["--cutoffs", "1000,0", "--guidance", "2.5"])
    assert seen and all((c.num_inference_steps, c.guidance_scale) == (3, 2.5) for c in seen)
    sample_settings = json.loads((out / "summary.json").read_text())["settings"]["sample"]
    assert (sample_settings["num_inference_steps"], sample_settings["guidance_scale"]) == (3, 2.5)
    base += ["--guidance", "2.5"]
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    l3 = {r["variant"]: r for r in rows if r["rung"] == "L3"}
    assert set(l3) == {"lora@1000", "lora@0", "base"} and l3["lora@0"]["lora_cutoff"] == 0
    # at cut-off 1000 the LoRA is never on: the same sample as the base model's, so the same distance
    assert l3["lora@1000"]["distance"] == l3["base"]["distance"]
    assert "L3 lora@0/base beta=0" in json.loads((out / "summary.json").read_text())["all"]["ratios"]
    # the montage: the reference, the LoRA at the first cut-off and the base model (3 strips, 2 px apart, 3x)
    h = json.loads((model_dir / "motion_matcher.json").read_text())["video"]["height"]
    assert Image.open(out / "ref0_curve.png").height == 3 * 3 * (h + 2)
    with pytest.raises(SystemExit, match="other settings"):  # the cut-offs are part of what a row means
        ladder.main(base + ["--cutoffs", "500"])
    for bad, msg in (("2000", "cut-off must be in"), ("a,b", "comma-separated")):
        with pytest.raises(SystemExit, match=msg):
            ladder.main(base[:3] + [str(tmp_path / "other")] + base[4:] + ["--cutoffs", bad])
    with pytest.raises(SystemExit, match="--guidance"):  # refused before any LoRA is trained
        ladder.main(base[:3] + [str(tmp_path / "neg")] + base[4:] + ["--guidance", "-1"])
    assert not (tmp_path / "neg" / "ref0").exists()


def test_ladder_inverts_with_the_lora_when_the_sampling_settings_say_so(tmp_path):
    model_dir = _untrained_model(tmp_path)
    cmd = ["--model", str(model_dir), "--refs", "0", "--prompts", "1", "--seeds", "1", "--steps", "2",
           "--sample-steps", "3", "--rungs", "L3", "--betas", "0.3", "--threads", "1"]
    caches = {}
    for name, extra in (("plain", []), ("with-lora", ["--set", "sample.invert_with_lora=true"])):
        ladder.main(cmd + ["--out", str(tmp_path / name)] + extra)
        caches[name] = sorted(p.name for p in (tmp_path / name / "ref0" / "cache").glob("inv-*.pt"))
    # the base model's inversion only; then, besides it, the reference inverted with the trained LoRA on
    assert len(caches["plain"]) == 1 and len(caches["with-lora"]) == 2
    assert caches["plain"][0] in caches["with-lora"]
    rows = [json.loads(x) for x in (tmp_path / "with-lora" / "rows.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in rows if r["rung"] == "L3"} == {"lora", "base"}


def test_ladder_summary_ratios():
    def row(rung, variant, beta, d, held=False):
        return {"ref": 0, "family": "curve", "held_out": held, "rung": rung, "variant": variant, "prompt": "p",
                "seed": 0, "beta": beta, "distance": d, "colour_ok": True, "coherent": True}

    rows = [row("L0", "oracle", 0.0, 0.01), row("L1", "lora", 0.0, 0.03), row("L1", "base", 0.0, 0.2),
            row("L3", "lora", 0.0, 0.1), row("L3", "lora", 0.0, float("nan")), row("L3", "base", 0.0, 0.4),
            row("L3", "lora", 0.3, 0.05, held=True), row("L3", "base", 0.3, 0.2, held=True)]
    s = ladder.summarize(rows)
    assert s["all"]["ratios"]["L1 / oracle"] == pytest.approx(3.0)
    assert s["all"]["ratios"]["L3 lora/base beta=0"] == pytest.approx(0.25)  # the untracked sample is left out
    assert s["all"]["groups"]["L3 lora beta=0"]["untracked"] == 1
    assert s["held_out"]["ratios"] == {"L3 lora/base beta=0.3": pytest.approx(0.25)}
    assert s["all"]["groups"]["L3 lora beta=0"]["shape_ok"] is None  # rows of older runs carry no shape check
    rows += [dict(row("L3", "frame-diff", 0.0, 0.3), shape_ok=False), dict(row("L3", "frame-diff", 0.0, 0.2),
                                                                            shape_ok=True)]
    s = ladder.summarize(rows)
    assert s["all"]["ratios"]["L3 frame-diff/base beta=0"] == pytest.approx(0.25 / 0.4)
    assert s["all"]["groups"]["L3 frame-diff beta=0"]["shape_ok"] == pytest.approx(0.5)
    assert s["all"]["groups"]["L3 frame-diff beta=0"]["size"] is None  # nor a size
    rows += [dict(row("L3", "residual", 0.0, 0.2), size=0.8), dict(row("L3", "residual", 0.0, 0.2), size=1.2),
             dict(row("L3", "residual", 0.0, 0.2), size=float("nan"))]
    s = ladder.summarize(rows)
    assert s["all"]["groups"]["L3 residual beta=0"]["size"] == pytest.approx(1.0)  # NaN (never found) left out
    assert "| L3 | residual | 0 | 3 | 0.200 | 0 | 100 % | - | 1.00 | 100 % |" in ladder.report_md(s, "cmd")


def test_ladder_size_is_the_drawn_objects_median_scale_over_the_references():
    def tr(scales):
        s = np.asarray(scales, dtype=float)
        return detector.Track(np.zeros((len(s), 2)), s, s ** 2, ~np.isnan(s), np.ones(len(s), int), "red", "star",
                              True)

    ref = tr([4.0, 4.0, 4.2, 3.8])
    assert ladder._size(tr([2.0, 2.0, 2.0, np.nan]), ref) == pytest.approx(0.5)  # frames not found are left out
    assert ladder._size(tr([6.0, 6.0, 6.0, 6.0]), ref) == pytest.approx(1.5)
    assert np.isnan(ladder._size(tr([np.nan] * 4), ref))
    # a real sample: the reference's own clip is its own size, a clip of the same path at a larger radius is larger
    small, big = (paths.render(paths.make_spec("square", "red", "plain", "white", "curve", size=r, seed=3, frames=4,
                                               height=32, width=32)) for r in (0.14, 0.21))
    assert ladder._size(detector.track(small.frames), detector.track(small.frames)) == pytest.approx(1.0)
    assert ladder._size(detector.track(big.frames), detector.track(small.frames)) > 1.1


def test_card_measures_a_model_and_writes_a_users_page(tmp_path, monkeypatch, capsys):
    from shapes_world import card

    model_dir, lad, flow = tmp_path / "m", tmp_path / "ladder", tmp_path / "flow"
    recipe.main(["--out", str(model_dir), "--clips", "4", "--vae-minutes", "0.005", "--unet-minutes", "0.005",
                 "--decoder-minutes", "0", "--threads", "1"])
    side = json.loads((model_dir / "motion_matcher.json").read_text())
    side["train"]["steps"] = 2  # the model's own training default, which the flow and the ladder use
    side["sample"]["num_inference_steps"] = 2
    side["sample"]["guidance_rescale"] = 0.75  # a model's own rescale, which the sweep reports when not given one
    (model_dir / "motion_matcher.json").write_text(json.dumps(side))
    ladder.main(["--model", str(model_dir), "--out", str(lad), "--refs", "0", "--prompts", "1", "--seeds", "1",
                 "--rungs", "L3", "--threads", "1"])
    card.main(["--model", str(model_dir), "--out", str(flow), "--flow-only"])
    # the guidance sweep judges a paths-world model with the card's own check, at the scale it is given
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import guidance_sweep

    seen: list[tuple[float, float, int]] = []
    real_sample = card.sample
    monkeypatch.setattr(card, "sample", lambda m, p, cfg, **kw: seen.append(
        (cfg.guidance_scale, cfg.guidance_rescale, cfg.num_inference_steps)) or real_sample(m, p, cfg, **kw))
    guidance_sweep.main(["--model", str(model_dir), "--n", "1", "--guidance", "2.5", "--rescale", "0,0.5",
                         "--steps", "3"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()[-2:]]
    assert seen == [(2.5, 0.0, 3), (2.5, 0.5, 3)]
    assert [(x["guidance"], x["rescale"], x["steps"]) for x in lines] == seen
    guidance_sweep.main(["--model", str(model_dir), "--n", "1", "--guidance", "2.5"])  # the model's own rescale, steps
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert seen[-1] == (2.5, 0.75, 2) and (line["guidance"], line["rescale"], line["steps"]) == (2.5, 0.75, 2)
    for bad in (["--seed", "19990", "--n", "20"], ["--rescale", "0,2"], ["--rescale", "x"], ["--steps", "0"]):
        with pytest.raises(SystemExit):  # the card's prompts are not for choosing settings; phi in [0, 1]; steps >= 1
            guidance_sweep.main(["--model", str(model_dir), *bad])
        assert "error" in capsys.readouterr().err
    (asked, got), = line["by_shape"].items()  # one prompt: its shape, drawn right or not
    assert asked in world.SHAPES and got[1] == 1 and got[0] == int(line["shape_acc"])
    monkeypatch.undo()
    flow_res = json.loads((flow / "results.json").read_text())["flow"]
    assert flow_res["train_steps"] == 2 and flow_res["total_s"] > 0
    card.main(["--model", str(model_dir), "--out", str(tmp_path / "card"), "--ladder", str(lad), "--flow", str(flow),
               "--prompts", "2", "--write"])
    res = json.loads((tmp_path / "card" / "results.json").read_text())
    assert res["prompt_following"]["n"] == 2 and "trained" in res["ladder"]
    assert res["ladder_samples"] == {"prompts": 1, "seeds": 1}  # counted from the ladder's rows
    text = (model_dir / "README.md").read_text()
    for section in ("## What it draws", "## Quality", "## Model", "## Rebuild", "](transfer.png)",
                    "recipe --replay assets/shapes-t2v/training_info.json", "| check | target | measured | met |",
                    "L3: MotionMatcher LoRA / base distance, beta 0 (training families)", "default flow",
                    "1 new prompt and 1 seed each", "How often the prompted shape comes out, on the card's prompts: ",
                    "AutoencoderKL (4 latent channels, factor 4)"):
        assert section in text, section
    assert (model_dir / "transfer.png").is_file()
    rows = card.checks(res)
    met = [r for r in rows if r[3]]
    assert f"Targets met: {len(met)} of {len(rows)}" in text  # computed, never typed in


def test_examples_follow_the_embedded_models_world(tmp_path):
    from shapes_world import examples

    assert examples.model_world(tmp_path) == "shapes"  # no record: the first world
    (tmp_path / "training_info.json").write_text(json.dumps({"info": {"world": "paths"}}))
    assert examples.model_world(tmp_path) == "paths"
    examples.main(["--out", str(tmp_path / "ex"), "--world", "paths", "--size", "32"])
    listing = json.loads((tmp_path / "ex" / "examples.json").read_text())
    assert [e["motion"] for e in listing] == [r[4] for r in ladder.REFERENCES[:6]]
    assert listing[0]["caption"] == "a red circle on a plain grey background"


def test_vae_ceiling_of_the_paths_world_uses_the_cards_prompts(tiny_model):
    from shapes_world import card, diagnose

    res = diagnose.ceiling(tiny_model, n=3, world_name="paths")
    prompts = [r["prompt"] for r in res["rendered"]["rows"]]
    rng = np.random.default_rng(20_000)
    assert prompts == [paths.caption(paths.sample_spec(rng)) for _ in range(3)]
    assert res["rendered"]["colour_acc"] == 1.0 and res["rendered"]["coherent"] == 1.0  # the judge reads renders
    # the card's prompts come from the same seed
    assert inspect.signature(card.prompt_following).parameters["seed"].default == 20_000


def test_formation_follows_the_models_own_sampler(tmp_path):
    import torch

    from motion_core.config import SampleConfig
    from motion_core.ddim import sampling_timesteps
    from motion_core.models import load_model
    from motion_core.sample import sample
    from shapes_world import diagnose

    model = load_model(_untrained_model(tmp_path), device="cpu")
    model.sample_defaults.update(num_inference_steps=4, guidance_scale=5.0, guidance_rescale=1.0)
    noise = torch.randn((1, model.latent_channels, 8, 4, 4), generator=torch.Generator().manual_seed(3))
    estimates, final = diagnose.clean_estimates(model, "a red circle on a plain white background", noise)
    ref = sample(model, "a red circle on a plain white background", SampleConfig(
        num_inference_steps=4, guidance_scale=5.0, guidance_rescale=1.0, beta=0.0, seed=0), latent_shape=(8, 4, 4),
        init_noise=noise, decode=False).latents
    assert torch.allclose(final, ref, atol=1e-5)  # the diagnosis walks the product's sampler with its defaults
    assert [t for t, _ in estimates] == [t for t, _ in sampling_timesteps(model.scheduler, 4)]
    rows = diagnose.formation(model, n=2)
    assert [r["t"] for r in rows] == [t for t, _ in estimates] and all(0 <= r["tracked"] <= 1 for r in rows)


def test_card_names_how_the_l1_lora_was_trained():
    from shapes_world import card

    cell = {"n": 2, "colour_ok": 1.0, "shape_ok": 1.0, "coherent": 1.0}
    res = {"vae_psnr": 31.0, "prompt_following": {"n": 4, "colour_acc": 1.0, "shape_acc": 1.0, "coherent": 1.0},
           "ladder": {"trained": {"ratios": {"L1 / oracle": 2.5},
                                  "groups": {"L0 oracle beta=0": {**cell, "distance": 0.02},
                                             "L1 lora beta=0": {**cell, "distance": 0.05}}}}}
    old = [r for r in card.checks(res) if r[0].startswith("L1")]
    assert len(old) == 1 and old[0][0].startswith("L1: DDPM LoRA, own caption") and not old[0][3]
    res["ladder_l1"] = {"train": {"steps": 1000}, "loss": {"t_min": 400}}
    new = [r for r in card.checks(res) if r[0].startswith("L1")]
    assert new[0][0] == "L1: DDPM LoRA (1000 steps, t >= 400), own caption, beta 0 (training families)"
    assert new[0][2] == "2.5 x (0.050 / 0.020)"
    res["ladder_l1"]["train"]["learning_rate"] = 5e-4  # a model's own rate may differ from the L1 LoRA's
    l1 = [r for r in card.checks(res) if r[0].startswith("L1")]
    assert l1[0][0] == "L1: DDPM LoRA (1000 steps at 0.0005, t >= 400), own caption, beta 0 (training families)"


def test_card_compares_motionmatcher_with_the_ladders_baselines():
    from shapes_world import card

    def cell(d, colour, shape=None):
        return {"n": 4, "distance": d, "colour_ok": colour, "shape_ok": shape, "coherent": 1.0}

    groups = {"L3 lora beta=0": cell(0.2, 1.0, 0.5), "L3 lora beta=0.3": cell(0.25, 1.0, 0.5),
              "L3 base beta=0": cell(0.4, 1.0, 0.5), "L3 base beta=0.3": cell(0.4, 1.0, 0.5),
              "L3 ddpm beta=0": cell(0.3, 1.0, 0.5), "L3 ddpm beta=0.3": cell(0.3, 0.5, 0.5),
              "L3 residual beta=0": cell(0.1, 1.0, 0.5), "L3 residual beta=0.3": cell(0.3, 1.0, 0.5),
              "L3 frame-diff beta=0": cell(0.3, 1.0, 1.0), "L3 frame-diff beta=0.3": cell(0.3, 1.0, 1.0)}
    rows = {r[0]: r for r in card._baseline_checks(groups, "held-out families")}
    assert rows["L3: MotionMatcher beats `ddpm` (held-out families)"][3]  # shorter at both betas, text better
    assert not rows["L3: MotionMatcher beats `residual` (held-out families)"][3]  # longer at beta 0
    assert not rows["L3: MotionMatcher beats `frame-diff` (held-out families)"][3]  # shorter, but text worse
    assert "0.200 vs 0.300 and 0.250 vs 0.300" in rows["L3: MotionMatcher beats `ddpm` (held-out families)"][2]
    groups["L3 ddpm beta=0"]["shape_ok"] = None  # a ladder from before the shape check: nothing to compare
    assert "L3: MotionMatcher beats `ddpm` (held-out families)" not in {
        r[0] for r in card._baseline_checks(groups, "held-out families")}


def test_card_reports_an_l3_cell_with_no_tracked_sample_as_not_met():
    from shapes_world import card

    def row(variant, d):
        return {"ref": 0, "family": "curve", "held_out": False, "rung": "L3", "variant": variant, "prompt": "p",
                "seed": 0, "beta": 0.0, "distance": d, "colour_ok": False, "coherent": False}

    res = {"vae_psnr": 31.0, "prompt_following": {"n": 2, "colour_acc": 1.0, "shape_acc": 1.0, "coherent": 1.0},
           "ladder": ladder.summarize([row("lora", float("nan")), row("base", 0.3)])}
    rows = {r[0]: r for r in card.checks(res)}
    cell = rows["L3: MotionMatcher LoRA / base distance, beta 0 (training families)"]
    assert not cell[3] and cell[2].startswith("no distance: 1 of 1 LoRA and 0 of 1 base samples")
    res["ladder"] = ladder.summarize([row("lora", 0.1), row("base", 0.4)])
    cell = {r[0]: r for r in card.checks(res)}["L3: MotionMatcher LoRA / base distance, beta 0 (training families)"]
    assert cell[3] and cell[2] == "0.25 (0.100 / 0.400, n = 1)"


def test_paired_text_counts_samples_that_share_reference_prompt_seed_and_beta():
    from shapes_world import card

    def row(variant, seed, shape_ok, ref=0, colour_ok=True, rung="L3"):
        return {"rung": rung, "variant": variant, "ref": ref, "prompt": "a red star", "seed": seed, "beta": 0.0,
                "held_out": ref >= 6, "colour_ok": colour_ok, "shape_ok": shape_ok}

    rows = [row("lora", 0, True), row("ddpm", 0, False),  # MotionMatcher ahead
            row("lora", 1, False), row("ddpm", 1, True),  # the baseline ahead
            row("lora", 2, True), row("ddpm", 2, True),  # a tie
            row("lora", 3, True, colour_ok=False), row("ddpm", 3, False, colour_ok=False),  # shape decides: ahead
            row("ddpm", 4, True),  # no MotionMatcher sample beside it: not a pair
            row("base", 0, False), row("lora", 0, True, ref=7), row("frame-diff", 0, True, ref=7),
            row("lora", 0, True, rung="L1"), row("ddpm", 0, False, rung="L1")]  # L1 is not compared
    got = card.paired_text(rows)
    assert got == {"trained": {"ddpm": [2, 1, 4]}, "held_out": {"frame-diff": [0, 0, 1]}}
    groups = {"L3 lora beta=0": {"distance": 0.1, "colour_ok": 1.0, "shape_ok": 0.5},
              "L3 ddpm beta=0": {"distance": 0.2, "colour_ok": 1.0, "shape_ok": 0.75}}
    (check,) = card._baseline_checks(groups, "training families", got["trained"])
    assert not check[3] and "of 4 paired samples, MotionMatcher's text better in 2, `ddpm`'s in 1" in check[2]
