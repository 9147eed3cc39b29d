"""The embedded model's recipe end to end with second-long budgets: a fresh run, a continuation, a decoder-only run.

    OMP_WAIT_POLICY=PASSIVE nice -n 15 .venv/bin/python -m pytest tests/test_shapes_recipe.py -q

The budgets are far too small to learn anything; the test checks that the stages run, that the weights change only
where each stage says they do, and that steps and commands accumulate into training_info.json and the model card.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from motion_core.config import RunConfig, SampleConfig
from motion_core.models import encode_video, load_model
from motion_core.sample import sample
from shapes_world import card, evaluate, grow, paths, recipe


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_fresh_continue_and_decoder_only(tmp_path):
    out = tmp_path / "m"
    tiny = ["--clips", "4", "--threads", "1"]
    recipe.main(["--out", str(out), "--vae-minutes", "0.01", "--unet-minutes", "0.01", "--decoder-minutes", "0",
                 *tiny])
    first = json.loads((out / "training_info.json").read_text())["info"]
    assert first["unet_steps"] >= 1 and first["vae_steps"] >= 1
    m0 = load_model(out, device="cpu")
    unet0, vae0 = _state(m0.unet), _state(m0.vae)

    recipe.main(["--continue-from", str(out), "--out", str(out), "--unet-minutes", "0.01", "--decoder-minutes", "0",
                 "--ema-decay", "0.5", "--p2-gamma", "1", "--save-raw", str(tmp_path / "raw"), *tiny])
    second = json.loads((out / "training_info.json").read_text())["info"]
    assert second["unet_steps"] > first["unet_steps"]  # steps count on
    m1 = load_model(out, device="cpu")
    assert not _same(unet0, _state(m1.unet))  # the UNet kept learning
    assert _same(vae0, _state(m1.vae))  # the VAE and its latent space did not move
    raw = load_model(tmp_path / "raw", device="cpu")  # --save-raw: the same run's last weights, not the average
    assert not _same(_state(raw.unet), _state(m1.unet)) and _same(_state(raw.vae), vae0)
    raw_info = json.loads((tmp_path / "raw" / "training_info.json").read_text())["info"]
    assert raw_info["continued"][-1]["ema_decay"] == 0 and second["continued"][-1]["ema_decay"] == 0.5
    assert second["continued"][-1]["p2_gamma"] == 1 and first.get("p2_gamma", 0) == 0  # each run keeps its own
    with pytest.raises(SystemExit):  # --save-raw without an average to compare with
        recipe.main(["--continue-from", str(out), "--out", str(out), "--save-raw", str(tmp_path / "r2"), *tiny])
    assert not (tmp_path / "r2").exists()
    assert m1.vae.config.scaling_factor == m0.vae.config.scaling_factor

    for _ in range(2):  # two decoder-only runs: their steps add up
        recipe.main(["--out", str(out), "--decoder-only", "--decoder-minutes", "0.005", *tiny])
    info = json.loads((out / "training_info.json").read_text())["info"]
    assert info["decoder_steps"] >= 2 and len(info["continued"]) == 3
    m2 = load_model(out, device="cpu")
    unet2, vae2 = _state(m2.unet), _state(m2.vae)
    assert _same(_state(m1.unet), unet2)  # decoder-only leaves the UNet alone
    enc = [k for k in vae2 if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in vae2 if k.startswith("decoder.")]
    assert all(torch.equal(vae0[k], vae2[k]) for k in enc)  # the encoder is frozen
    assert any(not torch.equal(vae0[k], vae2[k]) for k in dec)

    md = evaluate._training_md(info)
    assert md.count("python -m shapes_world.recipe") == 4
    assert md.count("--decoder-only") == 2 and "--continue-from" in md
    assert md.count("cosine over the budget") == 2 and "constant" not in md  # each UNet run keeps its own schedule
    notes = f"{evaluate.NOTES_START}\nmeasured by hand: 1.0 s\n{evaluate.NOTES_END}"
    (out / "README.md").write_text(f"old card\n{notes}\nold end\n")
    evaluate.write_card(out, "## Quality\n(not measured in this test)\n")
    card = (out / "README.md").read_text()
    assert f"{info['unet_steps']} steps in all" in card and "--decoder-only" in card
    assert "UNet3DConditionModel (32, 64, 64 channels, 1 layer per block)" in card
    assert notes in card and "old card" not in card  # the hand-written notes survive a rewrite, nothing else


def test_p2_weights_favour_the_noisy_levels_and_keep_mean_one():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert torch.equal(recipe.timestep_weights(sched, 0.0), torch.ones(1000))  # off: the plain noise loss
    w = recipe.timestep_weights(sched, 1.0)
    assert abs(float(w.mean()) - 1) < 1e-5 and bool((w[1:] > w[:-1]).all())  # more weight as the noise grows
    ab = sched.alphas_cumprod.double()
    ref = 1 / (1 + ab / (1 - ab))  # (k + SNR)^-1 with k = 1 is 1 - abar
    assert torch.allclose(w.double(), ref / ref.mean(), rtol=1e-5)
    assert float(w[0]) < 0.01 and float(w[999]) > 1.5  # near-clean levels count for almost nothing


def test_offset_noise_moves_each_clip_channel_mean_and_nothing_else():
    shape = (64, 4, 6, 8, 8)
    plain = recipe.training_noise(shape, torch.Generator().manual_seed(0))
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(0)))  # offset 0: unchanged
    off = recipe.training_noise(shape, torch.Generator().manual_seed(0), offset=0.5)
    assert torch.allclose(off - off.mean(dim=(2, 3, 4), keepdim=True),
                          plain - plain.mean(dim=(2, 3, 4), keepdim=True), atol=1e-5)  # same noise, shifted mean
    spread = (off - plain).mean(dim=(2, 3, 4)).std().item()
    assert 0.4 < spread < 0.6  # one N(0, 0.5^2) value per (clip, channel)


def test_image_steps_alternate_with_video_steps_and_use_single_frames_of_distinct_clips():
    """--image-every 2: every second step is a batch of one-frame clips; the caption batch matches it."""
    model = recipe.build_model(0)
    latents = torch.randn(6, 4, 5, 8, 8)
    captions = [f"a red circle on a {c} background" for c in ("blue", "green", "white", "black", "yellow", "gray")]
    seen = []
    forward = model.unet.forward

    def spy(sample, t, encoder_hidden_states=None, **kw):
        seen.append((tuple(sample.shape), tuple(encoder_hidden_states.shape[:1]), tuple(t.shape)))
        if len(seen) >= 4:
            raise StopIteration  # four steps are enough; the budget loop is wall-clock
        return forward(sample, t, encoder_hidden_states=encoder_hidden_states, **kw)

    model.unet.forward = spy
    try:
        recipe.train_unet(model, latents, captions, minutes=1.0, seed=0, log=[], batch=2, image_every=2,
                          image_batch=3, noise_offset=0.1)
    except StopIteration:
        pass
    assert seen[0] == ((2, 4, 5, 8, 8), (2,), (2,))  # video step: whole clips
    assert seen[1] == ((3, 4, 1, 8, 8), (3,), (3,))  # image step: one frame each, one caption each
    assert seen[2][0] == (2, 4, 5, 8, 8) and seen[3][0] == (3, 4, 1, 8, 8)


def test_card_commands_repeat_each_runs_own_options():
    """A continuation with offset noise and image steps is listed with exactly its options; the first run without."""
    info = {"clips": 3000, "vae_seconds": 900, "unet_seconds": 60 * 190, "decoder_seconds": 0, "unet_steps": 100,
            "unet_batch": 8, "wall_seconds": 7000, "cpu": "x86_64", "cores": 2, "torch_threads": 2, "lr": 4e-4,
            "unet_lr": "cosine",
            "continued": [{"from": "a", "clips": 4000, "unet_minutes": 98, "decoder_minutes": 0, "lr": 4e-4,
                           "noise_offset": 0.1, "image_every": 2, "image_batch": 48, "unet_lr": "cosine"},
                          {"from": "a", "clips": 4000, "unet_minutes": 80, "decoder_minutes": 0, "lr": 4e-4,
                           "torch_threads": 1, "unet_lr": "cosine", "ema_decay": 0.999}]}
    md = evaluate._training_md(info)
    first, cont, cont1 = md.split("```bash\n")[1].split("\n```")[0].splitlines()
    assert "--noise-offset" not in first and "--image-every" not in first and "--unet-minutes 12" in first
    assert first.endswith("--threads 2")  # the first run's threads
    assert cont.endswith("--clips 4000 --unet-minutes 98 --decoder-minutes 0 --noise-offset 0.1 --image-every 2 "
                         "--image-batch 48")  # a run recorded before threads were: no flag
    assert cont1.endswith("--unet-minutes 80 --decoder-minutes 0 --ema-decay 0.999 --threads 1")
    assert "--ema-decay" not in cont  # recorded before the option existed
    assert "saves the exponential moving average" in md
    assert "moving average" not in evaluate._training_md({**info, "continued": info["continued"][:1]})
    # no run here had the old constant rate: no caveat about it
    assert "constant" not in md
    info["unet_lr"] = "4e-4 after a 100-step warm-up, constant"
    assert "does not repeat it exactly" in evaluate._training_md(info)
    assert evaluate._clips_md(info).startswith("4000 clips (the first run used the first 3000")
    assert evaluate._clips_md({"clips": 3000}) == "3000 clips"


def test_ema_weights_are_the_moving_average_of_each_steps_weights(monkeypatch):
    """--ema-decay: the model ends with the average of the weights after each step, computed here by hand."""
    model = recipe.build_model(0)
    params = list(model.unet.parameters()) + list(model.text_encoder.parameters())
    history = [[p.detach().clone() for p in params]]

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            out = super().step(closure)
            history.append([p.detach().clone() for p in params])
            return out

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    latents = torch.randn(4, 4, 3, 8, 8)
    captions = [f"a red circle on a {c} background" for c in ("blue", "green", "white", "black")]
    raw: list = []
    # a large rate, so each step moves the weights far more than the tolerance below
    info = recipe.train_unet(model, latents, captions, minutes=0.08, seed=0, log=[], batch=2, lr=0.1,
                             ema_decay=0.5, raw_out=raw)
    steps = info["unet_steps"]
    assert steps >= 2 and len(history) == steps + 1 and info["ema_decay"] == 0.5
    avg = [h.clone() for h in history[0]]
    for s in range(steps):
        d = min(0.5, (1 + s) / (10 + s))
        avg = [d * a + (1 - d) * h for a, h in zip(avg, history[s + 1])]
    assert all(torch.allclose(p, a, rtol=0, atol=1e-6) for p, a in zip(params, avg))  # the model holds the average
    assert all(torch.equal(r, h) for r, h in zip(raw, history[-1]))  # raw_out holds the last step's weights
    assert any(not torch.equal(p, r) for p, r in zip(params, raw))


def test_card_names_a_gpu_run_its_device_size_and_batch():
    info = {"clips": 6000, "vae_seconds": 120, "unet_seconds": 5400, "decoder_seconds": 0, "unet_steps": 9000,
            "unet_batch": 32, "wall_seconds": 900, "cpu": "x86_64", "cores": 16, "torch_threads": 16, "lr": 4e-4,
            "unet_lr": "cosine", "unet_channels": [64, 128, 128], "unet_layers": 2, "device": "NVIDIA H100",
            "continued": [{"from": "a", "clips": 6000, "unet_minutes": 80, "decoder_minutes": 0, "lr": 4e-4,
                           "unet_lr": "cosine", "device": "cpu", "torch_threads": 2}]}
    md = evaluate._training_md(info)
    first, cont = md.split("```bash\n")[1].split("\n```")[0].splitlines()
    assert "--unet-channels 64,128,128 --unet-layers 2 --batch 32" in first and "--device cuda" in first
    assert "--device" not in cont and "--batch" not in cont and "--unet-channels" not in cont
    assert "for the runs with `--device cuda`, NVIDIA H100" in md and "no GPU" not in md
    shipped = {**info, "unet_channels": [32, 64, 64], "unet_layers": 1, "unet_batch": 8, "device": "cpu"}
    md = evaluate._training_md(shipped)
    assert "--unet-channels" not in md and "--unet-layers" not in md and "--device" not in md and "no GPU" in md


def test_model_size_options_and_parallel_rendering():
    """A wider, deeper UNet keeps 8 x 8 maps at down_blocks.1; the data do not depend on the number of workers."""
    model = recipe.build_model(0, (48, 96, 96), 2)
    assert model.unet.config.block_out_channels == (48, 96, 96) and model.unet.config.layers_per_block == 2
    assert len(model.unet.down_blocks[1].resnets) == 2
    with pytest.raises(ValueError, match="multiples of 16"):
        recipe.build_model(0, (30, 64, 64))
    f1, c1, m1 = recipe.make_data(6, seed=3)
    f2, c2, m2 = recipe.make_data(6, seed=3, workers=3)
    assert np.array_equal(f1, f2) and c1 == c2 and np.array_equal(m1, m2) and m1.shape == f1.shape[:-1] and m1.any()


def test_vae_factor_two_doubles_the_latent_grid_and_keeps_the_capture_block(tmp_path):
    """``--vae-factor 2``: a 32 x 32 clip gives 16 x 16 latents, the finest UNet level has no spatial attention, the
    motion extractor's block (down_blocks.1) keeps its attention at 8 x 8, and samples come back at 32 x 32."""
    out = tmp_path / "f2"
    tiny = ["--clips", "4", "--unet-minutes", "0.005", "--decoder-minutes", "0", "--threads", "1"]
    recipe.main(["--out", str(out), "--vae-factor", "2", "--vae-minutes", "0.005", *tiny])
    assert json.loads((out / "training_info.json").read_text())["info"]["vae_factor"] == 2
    model = load_model(out, device="cpu")
    assert model.vae_scale == 2
    z = encode_video(model, torch.rand(8, 3, 32, 32))
    assert z.shape == (1, 4, 8, 16, 16)
    assert not hasattr(model.unet.down_blocks[0], "attentions") and not hasattr(model.unet.up_blocks[2], "attentions")
    # its own LoRA defaults (250 steps at 2e-3, to fit the two-minute flow) reach the run config; factor 4 keeps 400
    train = RunConfig.for_model(model).train
    assert (train.steps, train.learning_rate) == (250, 2e-3)
    assert RunConfig.for_model(recipe.build_model(0)).train.steps == 400
    assert RunConfig.for_model(model, {"train": {"steps": 30}}).train.steps == 30
    maps = []
    hook = model.unet.down_blocks[1].attentions[0].register_forward_hook(lambda m, i, o: maps.append(o[0].shape))
    cfg = SampleConfig.for_model(model, {"beta": 0.0, "seed": 0, "num_inference_steps": 1})
    video = sample(model, "a red square on a plain white background", cfg, latent_shape=(8, 16, 16), use_lora=False)
    hook.remove()
    assert video.frames.shape == (1, 8, 3, 32, 32) and maps and tuple(maps[0][-2:]) == (8, 8)
    with pytest.raises(SystemExit):  # a continued model keeps the factor it was trained with
        recipe.main(["--continue-from", str(out), "--out", str(tmp_path / "c"), "--vae-factor", "2", *tiny])
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="vae_factor"):
        recipe.build_model(0, vae_factor=8)


def test_replay_runs_the_recorded_commands_again(tmp_path):
    out, again = tmp_path / "m", tmp_path / "again"
    tiny = ["--clips", "4", "--threads", "1", "--vae-minutes", "0.005", "--decoder-minutes", "0"]
    recipe.main(["--out", str(out), "--unet-minutes", "0.005", *tiny])
    recipe.main(["--continue-from", str(out), "--out", str(out), "--unet-minutes", "0.005", "--clips", "4",
                 "--threads", "1", "--decoder-minutes", "0"])
    first = json.loads((out / "training_info.json").read_text())["info"]
    assert first["world"] == "paths" and first["argv"][:2] == ["--out", str(out)]
    recipe.main(["--replay", str(out / "training_info.json"), "--out", str(again)])
    info = json.loads((again / "training_info.json").read_text())["info"]
    assert len(info["continued"]) == 1 and info["continued"][0]["from"] == str(again)
    def options(argv, folder):  # the recorded command without its output folder
        return [a for a in argv if a not in ("--out", folder)]

    # the replay names the sizes each run drew (whatever the world's SIZES are by then)
    drawn = ["--sizes", ",".join(f"{v:g}" for v in paths.SIZES.values())]
    assert options(info["argv"], str(again)) == options(first["argv"], str(out)) + drawn
    assert load_model(again, device="cpu").video_defaults["height"] == 32
    # the card lists the commands as typed, every option kept, the folders renamed to the shipped one
    cmds = evaluate._training_md(first).split("```bash\n")[1].split("\n```")[0].splitlines()
    assert cmds[0] == "python -m shapes_world.recipe " + " ".join(options(first["argv"], str(out)) + drawn) + \
        " --out assets/shapes-t2v"
    assert cmds[1].endswith("--out assets/shapes-t2v --continue-from assets/shapes-t2v")
    assert first["sizes"] == first["continued"][0]["sizes"] == info["sizes"] == list(paths.SIZES.values())
    def sizes_of(rec):
        return [argv[argv.index("--sizes") + 1] for argv in recipe.recorded_commands(rec, "o")]

    other = json.loads(json.dumps(first))
    other["continued"][0]["sizes"] = [0.2, 0.22, 0.25]
    assert sizes_of(other) == [drawn[1], "0.2,0.22,0.25"]
    for rec in (other, *other["continued"]):  # runs recorded before sizes were: the sizes of that time
        rec.pop("sizes")
    assert sizes_of(other) == [",".join(f"{v:g}" for v in recipe.EARLIER_SIZES)] * 2
    del first["argv"]
    assert "--out assets/shapes-t2v" in evaluate._training_md(first)  # older records: rebuilt from the options
    (out / "training_info.json").write_text(json.dumps({"info": first, "log": []}))
    with pytest.raises(SystemExit, match="before commands were recorded"):
        recipe.main(["--replay", str(out / "training_info.json"), "--out", str(tmp_path / "x")])


def test_sizes_option_draws_the_same_clips_at_other_radii(tmp_path):
    """--sizes changes only how big the objects are: the same paths world, the same draws from the same seed."""
    f0, c0, _ = recipe.make_data(6, seed=3)
    f1, c1, _ = recipe.make_data(6, seed=3, sizes=tuple(paths.SIZES.values()))
    assert np.array_equal(f0, f1) and c0 == c1
    other = (0.2, 0.22, 0.25)
    f2, c2, _ = recipe.make_data(6, seed=3, sizes=other)
    assert c2 == c0 and not np.array_equal(f2, f0)
    named = tuple(paths.SIZES.values())
    for a, b in zip(paths.iter_dataset(6, seed=3, sizes=other), paths.iter_dataset(6, seed=3)):
        k = other.index(float(a.spec.objects[0].size))
        assert a.spec.objects[0].radius / b.spec.objects[0].radius == pytest.approx(other[k] / named[k])
    for bad in (["--sizes", "0.2,0.9"], ["--sizes", "big"], ["--world", "shapes", "--sizes", "0.2"]):
        with pytest.raises(SystemExit):
            recipe.main(["--out", str(tmp_path / "x"), *bad])
    assert not (tmp_path / "x").exists()
    # a continued model keeps the sizes it was trained on unless told otherwise
    out = tmp_path / "m"
    tiny = ["--clips", "4", "--threads", "1", "--decoder-minutes", "0", "--unet-minutes", "0.003"]
    recipe.main(["--out", str(out), "--vae-minutes", "0.003", "--sizes", "0.2,0.22,0.25", *tiny])
    recipe.main(["--continue-from", str(out), "--out", str(out), *tiny])
    info = json.loads((out / "training_info.json").read_text())["info"]
    assert info["sizes"] == info["continued"][0]["sizes"] == [0.2, 0.22, 0.25]
    assert recipe.world_sizes(None, "paths", {"world": "paths"}) == recipe.EARLIER_SIZES  # recorded none
    with pytest.raises(SystemExit, match="paths world"):
        recipe.world_sizes((0.2,), "shapes", {"world": "shapes"})


def test_shape_weights_option_draws_the_weighted_shapes_and_records_them(tmp_path):
    """--shape-weights changes how often each shape is drawn and nothing when left out (earlier runs replay)."""
    f0, c0, _ = recipe.make_data(8, seed=3)
    f1, c1, _ = recipe._render(0, 8, 3, "paths", None, None)
    assert np.array_equal(f0, f1) and c0 == c1
    only = paths.shape_weights_of("circle=0,triangle=0,star=0")  # squares only
    assert only == (0.0, 1.0, 0.0, 0.0)
    _, c2, _ = recipe.make_data(8, seed=3, shape_weights=only)
    assert all(paths.parse(c)["shape"] == "square" for c in c2)
    _, c3, _ = recipe.make_data(400, seed=3, shape_weights=paths.shape_weights_of("square=3"))
    squares = sum(paths.parse(c)["shape"] == "square" for c in c3)
    assert 0.4 < squares / 400 < 0.6  # 3 of 6
    for bad in ("cube=2", "square", "square=-1", "square=nan", "star=x", "circle=0,square=0,triangle=0,star=0"):
        with pytest.raises(ValueError):
            paths.shape_weights_of(bad)
    for bad in (["--shape-weights", "cube=2"], ["--world", "shapes", "--shape-weights", "square=2"]):
        with pytest.raises(SystemExit):
            recipe.main(["--out", str(tmp_path / "x"), "--clips", "4", "--vae-minutes", "0.003", "--unet-minutes",
                         "0.003", "--decoder-minutes", "0", "--threads", "1", *bad])
    assert not (tmp_path / "x").exists()
    out = tmp_path / "m"
    tiny = ["--clips", "4", "--threads", "1", "--decoder-minutes", "0", "--unet-minutes", "0.003"]
    recipe.main(["--out", str(out), "--vae-minutes", "0.003", "--shape-weights", "square=2", *tiny])
    recipe.main(["--continue-from", str(out), "--out", str(out), "--shape-weights", "star=3", *tiny])
    info = json.loads((out / "training_info.json").read_text())["info"]
    assert info["shape_weights"] == {"circle": 1.0, "square": 2.0, "triangle": 1.0, "star": 1.0}
    assert info["continued"][0]["shape_weights"]["star"] == 3.0


def test_object_weights_weigh_the_object_and_its_rim_only():
    masks = np.zeros((1, 2, 8, 8), dtype=bool)
    masks[0, 0, 3:5, 3:5] = True  # a 2 x 2 object in frame 0, none in frame 1
    w = recipe.object_weights(masks, 9.0)
    assert w.shape == masks.shape and w.dtype == np.float32
    assert (w[0, 0, 2:6, 2:6] == 10).all()  # the object grown by one pixel
    assert w[0, 0].sum() == 64 + 9 * 16 and (w[0, 1] == 1).all()


def test_latent_object_weights_mark_the_objects_latent_pixels_and_keep_mean_one():
    masks = np.zeros((1, 2, 32, 32), dtype=bool)
    masks[0, 0, 13:18, 13:18] = True  # a 5 x 5 object in frame 0: latent pixels 3-4 (factor 4); none in frame 1
    w = recipe.latent_object_weights(masks, 4, 9.0)
    assert w.shape == (1, 2, 8, 8)
    f0 = w[0, 0]
    assert torch.allclose(f0.mean(), torch.tensor(1.0)) and torch.allclose(w[0, 1], torch.ones(8, 8))
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True  # latent pixels 3-4 grown by one
    assert torch.allclose(f0[inside], f0[inside][0]) and torch.allclose(f0[~inside], f0[~inside][0])
    assert torch.isclose(f0[inside][0] / f0[~inside][0], torch.tensor(10.0))  # 1 + 9 against 1
    for bad in ("-1", "1000"):
        with pytest.raises(SystemExit):
            recipe.main(["--out", "unused", "--unet-object-weight", bad])


def test_unet_object_weight_reweighs_the_noise_loss_by_latent_pixel(monkeypatch):
    """noise_loss against a hand computation; train_unet hands it the weights of the clips (video steps) or
    frames (image steps) it drew, and none without --unet-object-weight."""
    pred, eps = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    tw, pw = torch.tensor([1.0, 2.0]), torch.rand(2, 3, 8, 8)
    hand = torch.stack([((pred[i] - eps[i]) ** 2 * pw[i]).mean() * tw[i] for i in range(2)]).mean()
    assert torch.allclose(recipe.noise_loss(pred, eps, tw, pw), hand)
    assert torch.allclose(recipe.noise_loss(pred, eps, tw), torch.stack(
        [((pred[i] - eps[i]) ** 2).mean() * tw[i] for i in range(2)]).mean())

    model = recipe.build_model(0)
    latents = torch.randn(4, 4, 2, 8, 8)
    masks = np.zeros((4, 2, 32, 32), dtype=bool)
    for k in range(4):
        masks[k, 0, 4 * k:4 * k + 6, 8:14] = True  # each clip's object elsewhere in frame 0; frame 1 empty
    caps = ["a red circle on a plain white background"] * 4
    for weight in (0.0, 9.0):
        seen: list = []
        real = recipe.noise_loss

        def spy(pred, eps, tw, pix_w=None, seen=seen, real=real):
            seen.append(pix_w)
            if len(seen) == 2:
                raise StopIteration
            return real(pred, eps, tw, pix_w)

        monkeypatch.setattr(recipe, "noise_loss", spy)
        with pytest.raises(StopIteration):
            recipe.train_unet(model, latents, caps, minutes=1.0, seed=0, log=[], batch=2, image_every=2, image_batch=3,
                              object_masks=masks, object_weight=weight)
        monkeypatch.undo()
        if weight == 0:
            assert seen == [None, None]
            continue
        full = recipe.latent_object_weights(masks, model.vae_scale, weight)
        g = torch.Generator().manual_seed(1)  # train_unet's batch stream (seed + 1): the first step's clips
        idx = torch.randint(0, 4, (2,), generator=g)
        assert torch.equal(seen[0], full[idx])  # video step: (2, F, h, w), the drawn clips' weights
        assert seen[1].shape == (3, 1, 8, 8)  # image step: one frame of each of 3 clips
        assert all(any(torch.equal(seen[1][j, 0], full[c, f]) for c in range(4) for f in range(2)) for j in range(3))


def test_unet_t_max_draws_only_the_near_clean_levels(monkeypatch):
    model = recipe.build_model(0)
    latents = torch.randn(4, 4, 2, 8, 8)
    seen: list = []
    forward = model.unet.forward

    def spy(sample, t, **kw):
        seen.append(t.clone())
        if len(seen) == 6:
            raise StopIteration
        return forward(sample, t, **kw)

    monkeypatch.setattr(model.unet, "forward", spy)
    with pytest.raises(StopIteration):
        recipe.train_unet(model, latents, ["a red circle on a plain white background"] * 4, minutes=1.0, seed=0,
                          log=[], batch=4, t_max=50)
    t = torch.cat(seen)
    assert t.max() < 50 and len(set(t.tolist())) > 5  # drawn from [0, 50), not one fixed level
    with pytest.raises(SystemExit):
        recipe.main(["--out", "unused", "--unet-t-max", "0"])


@pytest.mark.parametrize("channels", [(32, 64, 64), (16, 32, 48)])
def test_grow_unet_draws_the_same_and_its_new_layers_learn(channels):
    """One more layer a block, twice over: the grown UNet's output equals the original's, and the new layers get
    gradients (they are identities that can learn, not dead weights)."""
    torch.manual_seed(0)
    unet = recipe.build_model(0, channels).unet.eval()  # eval: no dropout
    with torch.no_grad():  # every weight non-zero, so a mis-wired layer cannot hide behind a zero init
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, text = torch.randn(2, 4, 8, 8, 8), torch.tensor([900, 30]), torch.randn(2, 7, 64)
    with torch.no_grad():
        want = unet(x, t, encoder_hidden_states=text).sample
    grown = unet
    for layers in (2, 3):
        grown = grow.grow_unet(grown).eval()
        assert grown.config.layers_per_block == layers and len(grown.up_blocks[1].resnets) == layers + 1
        with torch.no_grad():
            got = grown(x, t, encoder_hidden_states=text).sample
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert sum(p.numel() for p in grown.parameters()) > 1.8 * sum(p.numel() for p in unet.parameters())
    grown.requires_grad_(True)
    grown(x, t, encoder_hidden_states=text).sample.square().mean().backward()
    for name in ("down_blocks.0.resnets.2.conv2.weight", "up_blocks.2.resnets.1.conv2.weight",
                 "up_blocks.1.attentions.1.proj_out.weight", "down_blocks.1.temp_attentions.2.proj_out.weight"):
        assert grown.get_parameter(name).grad.abs().sum() > 0, name


def test_recipe_grow_continues_a_model_one_layer_deeper(tmp_path):
    out, grown = tmp_path / "m", tmp_path / "g"
    tiny = ["--clips", "4", "--threads", "1", "--decoder-minutes", "0"]
    with pytest.raises(SystemExit):
        recipe.main(["--out", str(out), "--grow", *tiny])  # nothing to grow
    recipe.main(["--out", str(out), "--vae-minutes", "0.005", "--unet-minutes", "0.005", *tiny])
    recipe.main(["--continue-from", str(out), "--out", str(grown), "--grow", "--unet-minutes", "0.005", *tiny])
    info = json.loads((grown / "training_info.json").read_text())["info"]
    model = load_model(grown, device="cpu")
    assert model.unet.config.layers_per_block == 2 == info["continued"][-1]["unet_layers"] != info["unet_layers"]
    assert info["continued"][-1]["grow"]
    assert info["params"]["unet"] == sum(p.numel() for p in model.unet.parameters())
    cmds = recipe.recorded_commands(info, "x")
    assert "--grow" in cmds[1] and "--grow" not in cmds[0]
    evaluate.write_card(grown, "## Quality\n(not measured in this test)\n")
    md = (grown / "README.md").read_text()
    assert "2 layers per block" in md and "--unet-layers" not in md  # grown, not built deeper


def test_transplant_carries_every_shared_tensor_into_the_factor_two_layout():
    """``grow.transplant`` from a factor-4 UNet to a factor-2 one: each tensor both have is copied exactly, the
    finest level's attention (which the factor-2 UNet lacks) is dropped, nothing is left fresh; another width or
    another family is refused, and the destination keeps its weights."""
    src, dst = recipe.build_model(1), recipe.build_model(2, vae_factor=2)
    before = _state(dst.unet)
    counts = grow.transplant(dst.unet, src.unet)
    theirs, ours = src.unet.state_dict(), dst.unet.state_dict()
    assert counts == {"copied": len(ours), "dropped": len(theirs) - len(ours), "fresh": 0}
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not _same(before, ours)  # the two seeds differ, so the copy changed the weights
    dropped = {".".join(k.split(".")[:3]) for k in theirs if k not in ours}
    assert dropped == {"down_blocks.0.attentions", "down_blocks.0.temp_attentions", "up_blocks.2.attentions",
                       "up_blocks.2.temp_attentions"}
    assert grow.transplant(dst.text_encoder, src.text_encoder) == {
        "copied": len(src.text_encoder.state_dict()), "dropped": 0, "fresh": 0}
    wide = recipe.build_model(3, unet_channels=(48, 64, 64), vae_factor=2)
    kept = _state(wide.unet)
    with pytest.raises(ValueError, match="differ in shape"):
        grow.transplant(wide.unet, src.unet)
    assert _same(kept, wide.unet.state_dict())  # refused before anything was copied
    with pytest.raises(ValueError, match="no tensor names in common"):
        grow.transplant(dst.unet, src.text_encoder)


def test_recipe_init_from_starts_a_fresh_model_from_a_trained_one(tmp_path, capsys):
    """``--init-from``: a factor-2 run starts its UNet and text encoder from a trained factor-4 model and records
    it; a continuation, a folder that is no model and a model of the other world are refused before any work."""
    src, out = tmp_path / "src", tmp_path / "f2"
    tiny = ["--clips", "4", "--threads", "1", "--decoder-minutes", "0", "--vae-minutes", "0.005"]
    recipe.main(["--out", str(src), "--unet-minutes", "0.005", *tiny])
    trained = load_model(src, device="cpu")
    recipe.main(["--out", str(out), "--vae-factor", "2", "--init-from", str(src), "--unet-minutes", "0", *tiny])
    info = json.loads((out / "training_info.json").read_text())["info"]
    src_steps = json.loads((src / "training_info.json").read_text())["info"]["unet_steps"]
    assert info["init_from"]["folder"] == str(src) and info["init_from"]["unet_steps"] == src_steps > 0
    assert info["init_from"]["unet"]["fresh"] == 0 and info["init_from"]["unet"]["dropped"] > 0
    model = load_model(out, device="cpu")
    ours, theirs = model.unet.state_dict(), trained.unet.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # no UNet steps: the transplanted weights as they are
    assert _same(_state(model.text_encoder), trained.text_encoder.state_dict())
    assert "--init-from" in recipe.recorded_commands(info, "x")[0]
    assert info["init_from"]["unet_sha256"] == recipe._unet_sha(src)
    line = card.init_line(info)  # the card says where the first run started, and that a replay needs it
    assert str(src) in line and f"{src_steps} UNet steps" in line and card.init_line({"unet_steps": 1}) == ""
    weights = next((src / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")  # the source is no longer the model the run started from
    with pytest.raises(SystemExit, match="no longer there"):
        recipe.replay(out / "training_info.json", str(tmp_path / "again"))
    assert not (tmp_path / "again").exists()
    bad = [(str(src), ["--continue-from", str(src)], "starts a fresh run"),
           (str(tmp_path / "nothing"), [], "not a model folder"), (str(src), ["--world", "shapes"], "world")]
    for folder, extra, message in bad:
        with pytest.raises(SystemExit) as e:
            recipe.main(["--out", str(tmp_path / "x"), "--init-from", folder, "--unet-minutes", "0", *tiny, *extra])
        assert message in f"{e.value.code} {capsys.readouterr().err}"
    assert not (tmp_path / "x").exists()
