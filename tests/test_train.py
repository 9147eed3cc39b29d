"""The training loop: base weights untouched, progress, cancel, checkpoints and resume, non-finite loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from motion_core.config import RunConfig
from motion_core.lora_io import load_lora, lora_state_dict
from motion_core.models import encode_video
from motion_core.testing import build_tiny_model
from motion_core.train import NonFiniteLossError, train_lora


def _cfg(steps=6, every=3, objective="motion"):
    cfg = RunConfig()
    cfg.train.steps = steps
    cfg.train.checkpoint_every = every
    cfg.lora.rank = 4
    cfg.loss.objective = objective
    return cfg


@pytest.fixture(scope="module")
def frames():
    return torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_training_changes_only_lora_and_writes_outputs(frames, tmp_path):
    model = build_tiny_model()
    base = {k: v.clone() for k, v in model.unet.state_dict().items()}
    seen = []
    res = train_lora(model, frames, "a red circle", tmp_path, _cfg(), callback=seen.append)
    assert res.steps_done == 6 and not res.cancelled and res.lora_path.is_file()
    after = model.unet.state_dict()
    for k, v in base.items():  # base weights bit-identical (peft renames them under base_layer)
        k2 = k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[k2], v), k
    assert [p.step for p in seen if p.phase == "training"] == [1, 2, 3, 4, 5, 6]
    p = seen[0]
    assert p.total == 6 and p.steps_per_sec > 0 and p.eta_sec >= 0 and set(p.parts) == {"ca", "tsa"}
    assert seen[-1].phase == "saving"
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and all(500 <= r["t"] < 1000 for r in log)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["caption"] == "a red circle" and cfg["train"]["steps"] == 6
    meta = load_lora(res.lora_path, build_tiny_model())
    assert meta["objective"] == "motion" and meta["steps"] == 6 and meta["frames"] == 8


def test_training_is_seeded(frames, tmp_path):
    a = train_lora(build_tiny_model(), frames, "a red circle", tmp_path / "a", _cfg(steps=3, objective="ddpm"))
    b = train_lora(build_tiny_model(), frames, "a red circle", tmp_path / "b", _cfg(steps=3, objective="ddpm"))
    assert [r["loss"] for r in a.losses] == [r["loss"] for r in b.losses]


def test_a_batch_of_draws_per_step(frames, tmp_path):
    cfg = _cfg(steps=2)
    cfg.train.batch_size = 3
    res = train_lora(build_tiny_model(), frames, "a red circle", tmp_path, cfg)
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert res.steps_done == 2 and [len(r["t"]) for r in log] == [3, 3]
    assert all(500 <= t < 1000 for r in log for t in r["t"]) and len(set(log[0]["t"] + log[1]["t"])) > 1
    # batch 1 draws exactly as before batches existed: one int timestep per step, the same seeded stream
    one = train_lora(build_tiny_model(), frames, "a red circle", tmp_path / "one", _cfg(steps=2))
    gen = torch.Generator().manual_seed(0)
    first_t = int(torch.randint(500, 1000, (1,), generator=gen))
    assert one.losses[0]["t"] == first_t
    for bad in (0, 17):
        cfg.train.batch_size = bad
        with pytest.raises(ValueError, match="batch_size"):
            train_lora(build_tiny_model(), frames, "a red circle", tmp_path / "bad", cfg)


def test_caption_dropout_trains_some_draws_under_the_pool_s_captions(frames, tmp_path, monkeypatch):
    import motion_core.train as train_mod
    from motion_core.models import encode_prompt

    seen = []
    real = train_mod.get_objective

    def spy(name):
        f = real(name)
        return lambda ctx, z0, text, t, eps: (seen.append(text.clone()), f(ctx, z0, text, t, eps))[1]

    monkeypatch.setattr(train_mod, "get_objective", spy)
    model = build_tiny_model()
    pool = ("a blue star", "")
    want = {c: encode_prompt(model, c).float() for c in ("a red circle", *pool)}

    def run(dropout, steps=8, batch=2):
        seen.clear()
        cfg = _cfg(steps=steps, objective="ddpm")
        cfg.train.batch_size, cfg.train.caption_dropout, cfg.train.caption_pool = batch, dropout, pool
        train_lora(model, frames, "a red circle", tmp_path / str(dropout), cfg, resume=False)
        which = []
        for text in seen:
            for item in text:
                which.append(next(c for c, e in want.items() if torch.equal(item, e[0])))
        return which

    assert set(run(0.0)) == {"a red circle"}
    assert set(run(1.0)) == set(pool)  # every draw under a pool caption, both of them used
    mixed = run(0.5, steps=12)
    assert set(mixed) == {"a red circle", *pool} and len(mixed) == 24
    cfg = _cfg()
    for bad, msg in ((("x" * 5000,), "too long"), ((), "1 to 256")):
        cfg.train.caption_dropout, cfg.train.caption_pool = 0.5, bad
        with pytest.raises(ValueError, match=msg):
            cfg.validate()
    cfg.train.caption_pool, cfg.train.caption_dropout = ("",), 1.5
    with pytest.raises(ValueError, match="caption_dropout"):
        cfg.validate()


def test_recolourings_keep_every_pixel_s_motion_and_change_the_colours(frames):
    from motion_core.train import recolourings

    def clip(obj, bg):
        c = torch.zeros(3, 3, 8, 8)
        for i in range(3):  # a square moving right
            c[i] = torch.tensor(bg).view(3, 1, 1)
            c[i, :, 2:5, i:i + 3] = torch.tensor(obj).view(3, 1, 1)
        return c

    ref = clip([0.9, 0.3, 0.1], [0.2, 0.5, 0.75])
    out = recolourings(ref)
    assert len(out) == 11 and len({o.numpy().tobytes() for o in [ref, *out]}) == 12
    moving = (ref[1:] - ref[:-1]).abs().sum(1) > 0
    for o in out:  # the same pixels change between frames: the motion is the reference's
        assert torch.equal((o[1:] - o[:-1]).abs().sum(1) > 0, moving)
    # a red object on grey: the object takes every primary and secondary colour (red again when green and blue
    # swap); grey stays grey
    red = recolourings(clip([1.0, 0.0, 0.0], [0.5, 0.5, 0.5]))
    assert {tuple(o[0, :, 3, 1].tolist()) for o in red} == {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
                                                             (0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0)}
    assert all(torch.equal(o[0, :, 0, 0], torch.full((3,), 0.5)) for o in red)


def test_recoloured_draws(frames, tmp_path, monkeypatch):
    import motion_core.train as train_mod
    from motion_core.train import recolourings

    seen = []
    real = train_mod.get_objective
    monkeypatch.setattr(train_mod, "get_objective", lambda name: lambda ctx, z0, text, t, eps: (
        seen.append(z0.clone()), real(name)(ctx, z0, text, t, eps))[1])
    model = build_tiny_model()
    variants = [encode_video(model, f) for f in [frames, *recolourings(frames)]]

    def run(share):
        seen.clear()
        cfg = _cfg(steps=6, objective="ddpm")
        cfg.train.batch_size, cfg.train.recolour = 2, share
        train_lora(model, frames, "a red circle", tmp_path / str(share), cfg, resume=False)
        return [next(k for k, v in enumerate(variants) if torch.equal(item, v[0])) for z in seen for item in z]

    assert set(run(0.0)) == {0}
    on = run(1.0)
    assert 0 not in on and len(set(on)) > 3  # (the frames here are random: no colouring equals the clip)
    # from latents (as the CLI and the app pass the reference): the copies are recolourings of the decoded frames
    from motion_core.models import decode_latents

    z = encode_video(model, frames)
    variants = [z, *[encode_video(model, f) for f in recolourings(decode_latents(model, z)[0])]]
    seen.clear()
    cfg = _cfg(steps=3, objective="ddpm")
    cfg.train.batch_size, cfg.train.recolour = 2, 1.0
    train_lora(model, z, "a red circle", tmp_path / "z", cfg)
    got = [next(k for k, v in enumerate(variants) if torch.equal(item, v[0])) for zz in seen for item in zz]
    assert 0 not in got and len(got) == 6


def _blur_by_hand(frames, sigma):
    """A Gaussian blur written as the 2-D sum it is: every output pixel a weighted mean of its (2r + 1)^2
    neighbours, indices clamped at the edges, weights exp(-(dy^2 + dx^2) / (2 sigma^2)) normalised."""
    r = math.ceil(3 * sigma)
    n, c, h, w = frames.shape
    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    wts = torch.tensor([math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma)) for dy, dx in offs], dtype=torch.float64)
    wts = wts / wts.sum()
    out = torch.zeros(n, c, h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            for (dy, dx), wt in zip(offs, wts, strict=True):
                out[:, :, y, x] += wt * frames[:, :, min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)].double()
    return out


def test_blurred_matches_the_2d_gaussian_sum_and_keeps_the_path():
    from motion_core.train import blurred

    clip = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(3))
    for sigma in (0.5, 1.0, 2.0):  # taps past the 7 x 9 frame at 2 (r = 6): the edges are extended
        assert torch.allclose(blurred(clip, sigma).double(), _blur_by_hand(clip, sigma), atol=1e-6)
    assert blurred(clip, 0) is clip
    flat = torch.full((1, 3, 6, 6), 0.4)
    assert torch.allclose(blurred(flat, 1.5), flat, atol=1e-6)  # a plain background keeps its colour, edges too
    # a square moving right: blurred, the brightest pixel of each frame is still the square's centre
    c = torch.zeros(3, 3, 16, 16)
    for i in range(3):
        c[i, :, 6:9, 3 + 3 * i:6 + 3 * i] = 1.0
    peak = [divmod(int(f[0].argmax()), 16) for f in blurred(c, 1.5)]
    assert peak == [(7, 4), (7, 7), (7, 10)]


def test_blurred_draws(frames, tmp_path, monkeypatch):
    """``train.blur``: every draw, the reference's and its recoloured copies', comes from the blurred clip, whether
    the reference is given as frames or as latents; 0 leaves training as it was."""
    from safetensors.torch import load_file

    import motion_core.train as train_mod
    from motion_core.models import decode_latents
    from motion_core.train import blurred, recolourings

    seen = []
    real = train_mod.get_objective
    monkeypatch.setattr(train_mod, "get_objective", lambda name: lambda ctx, z0, text, t, eps: (
        seen.append(z0.clone()), real(name)(ctx, z0, text, t, eps))[1])
    model = build_tiny_model()

    def run(ref, blur, recolour=0.0, name="x"):
        seen.clear()
        cfg = _cfg(steps=3, objective="ddpm")
        cfg.train.batch_size, cfg.train.blur, cfg.train.recolour = 2, blur, recolour
        res = train_lora(model, ref, "a red circle", tmp_path / name, cfg, resume=False)
        return [item for z in seen for item in z], load_file(str(res.lora_path))

    plain, w_plain = run(frames, 0.0, name="p")
    sharp = encode_video(model, frames)[0]
    assert all(torch.equal(z, sharp) for z in plain)
    soft = encode_video(model, blurred(frames, 1.5))[0]
    got, w_blur = run(frames, 1.5, name="b")
    assert all(torch.equal(z, soft) for z in got)
    assert any(not torch.equal(w_plain[k], w_blur[k]) for k in w_plain)
    # recoloured copies are copies of the blurred clip
    copies = [encode_video(model, f)[0] for f in recolourings(blurred(frames, 1.5))]
    got, _ = run(frames, 1.5, recolour=1.0, name="r")
    assert all(any(torch.equal(z, c) for c in copies) for z in got)
    # from latents (the CLI's and the app's reference): the decoded frames are blurred, then encoded again
    z = encode_video(model, frames)
    soft_z = encode_video(model, blurred(decode_latents(model, z)[0], 1.5))[0]
    got, _ = run(z, 1.5, name="z")
    assert all(torch.equal(item, soft_z) for item in got)


def test_blur_range_is_checked():
    cfg = RunConfig()
    cfg.train.blur = -1
    with pytest.raises(ValueError, match="blur must be in"):
        cfg.validate()


NAMES = {"": {"red": [230, 20, 20], "green": [20, 230, 20], "blue": [20, 20, 230], "yellow": [230, 230, 20],
               "white": [240, 240, 240]},
         "background": {"grey": [120, 120, 120], "white": [240, 240, 240], "black": [15, 15, 15],
                        "dark green": [20, 90, 30]}}


def test_recolour_caption_names_what_the_recoloured_pixels_show():
    from motion_core.train import RECOLOUR_NAME_TOLERANCE, RECOLOURINGS, recolour_caption, recolourings

    cap = "a red circle on a plain grey background"
    obj, bg = torch.tensor(NAMES[""]["red"]) / 255, torch.tensor(NAMES["background"]["grey"]) / 255
    clip = bg.view(1, 3, 1, 1).repeat(2, 1, 4, 4)
    clip[:, :, 1:3, 1:3] = obj.view(1, 3, 1, 1)
    seen = set()
    for (perm, inv), copy in zip(RECOLOURINGS, recolourings(clip), strict=True):
        got = recolour_caption(cap, perm, inv, NAMES)
        # independent of the caption code: the nearest named colour of the copy's actual object / background pixels
        o, b = (copy[0, :, 1, 1] * 255).tolist(), (copy[0, :, 0, 0] * 255).tolist()
        near_o = min(NAMES[""], key=lambda n: sum((x - y) ** 2 for x, y in zip(NAMES[""][n], o)))
        near_b = min(NAMES["background"], key=lambda n: sum((x - y) ** 2 for x, y in zip(NAMES["background"][n], b)))
        if got is None:  # inverted red is cyan or magenta under a permutation: no name near it here
            assert inv and min(math.dist(o, v) for v in NAMES[""].values()) > RECOLOUR_NAME_TOLERANCE
        else:
            assert got == f"a {near_o} circle on a plain {near_b} background"
            seen.add(got)
    assert seen == {cap, "a green circle on a plain grey background", "a blue circle on a plain grey background",
                    "a yellow circle on a plain grey background"}  # inverted blue is yellow; grey stays grey


def test_recolour_caption_context_longest_name_case_and_punctuation():
    from motion_core.train import recolour_caption

    swap_rb, invert = (2, 1, 0), ((0, 1, 2), True)
    # "white" is looked up in the background table before "background", in the object table elsewhere: inverted,
    # the background is black, the object (15, 15, 15) has no object name here
    got = recolour_caption("a blue star on a white background", *invert, NAMES)
    assert got == "a yellow star on a black background"
    assert recolour_caption("a white star on a white background", *invert, NAMES) is None
    assert recolour_caption("a Red square, on a dark green background", swap_rb, False, NAMES) == \
        "a blue square, on a dark green background"
    # "dark green" is one name (not "green" after "dark"), and it leaves the tolerance under a red / blue swap
    assert recolour_caption("a red square on a dark green background", swap_rb, False, NAMES) == \
        "a blue square on a dark green background"
    assert recolour_caption("a red square on a dark green background", (1, 0, 2), False, NAMES) is None
    assert recolour_caption("a Red circle.", swap_rb, False, NAMES) == "a blue circle."
    assert recolour_caption("a dog running", swap_rb, False, NAMES) is None  # no colour to rename
    assert recolour_caption("a dark circle on a red background", swap_rb, False, NAMES) is None  # no red backgrounds
    assert recolour_caption("a yellow circle on a red background", (0, 1, 2), False, NAMES) is None


def test_recoloured_draws_under_renamed_captions(frames, tmp_path, monkeypatch):
    import motion_core.train as train_mod
    from motion_core.models import encode_prompt
    from motion_core.train import RECOLOURINGS, recolour_caption, recolourings

    seen = []
    real = train_mod.get_objective
    monkeypatch.setattr(train_mod, "get_objective", lambda name: lambda ctx, z0, text, t, eps: (
        seen.append((z0.clone(), text.clone())), real(name)(ctx, z0, text, t, eps))[1])
    model = build_tiny_model()
    caption = "a red circle on a striped background"
    names = {"": {"red": [230, 20, 20], "green": [20, 230, 20], "blue": [20, 20, 230]}}
    variants = {-1: (encode_video(model, frames), caption)}
    for k, ((perm, inv), f) in enumerate(zip(RECOLOURINGS, recolourings(frames), strict=True)):
        variants[k] = (encode_video(model, f), recolour_caption(caption, perm, inv, names))
    named = {k for k, (_, c) in variants.items() if c is not None and k >= 0}
    assert len(named) == 5  # red, green, blue under the five permutations; the inversions are cyan / magenta / yellow
    cfg = _cfg(steps=8, objective="ddpm")
    cfg.train.batch_size, cfg.train.recolour, cfg.train.recolour_names = 2, 0.75, names
    res = train_lora(model, frames, caption, tmp_path / "n", cfg, resume=False)
    assert sorted(res.recolour_captions) == sorted(variants[k][1] for k in named)
    used = set()
    for z, text in seen:
        for zi, ti in zip(z, text, strict=True):
            k = next(k for k, v in variants.items() if torch.equal(zi, v[0][0]))
            assert k == -1 or k in named  # an unnamed copy is never drawn
            want = {c: encode_prompt(model, c).float()[0] for c in {caption, *(variants[j][1] for j in named)}}
            assert min(want, key=lambda c: float((want[c] - ti).abs().max())) == variants[k][1]  # its own caption
            assert torch.allclose(ti, want[variants[k][1]], atol=1e-5)
            used.add(k)
    assert -1 in used and len(used) > 2
    # no colour the names know: no copy, training goes on under the reference's caption alone
    seen.clear()
    res = train_lora(model, frames, "a dog on a striped background", tmp_path / "d", cfg, resume=False)
    assert res.recolour_captions == [] and all(torch.equal(z[0], variants[-1][0][0]) for z, _ in seen)


def test_recolour_names_are_checked():
    cfg = _cfg()
    for bad, msg in (({"Background": {"grey": [1, 2, 3]}}, "one lower-case word"),
                     ({"": {"Red": [1, 2, 3]}}, "lower-case words"), ({"": {"red": [1, 2]}}, "three numbers"),
                     ({"": {"red": [1, 2, 300]}}, "three numbers"), ({"": {}}, "1 to 64"), ([1], "at most 16")):
        cfg.train.recolour_names = bad
        with pytest.raises(ValueError, match=msg):
            cfg.validate()
    cfg.train.recolour_names = NAMES
    cfg.validate()


def test_cancel_checkpoints_and_resume_matches_an_uninterrupted_run(frames, tmp_path):
    full_model = build_tiny_model()
    full = train_lora(full_model, frames, "a red circle", tmp_path / "full", _cfg(steps=6, every=50))

    model = build_tiny_model()
    steps_seen = []

    def cancel_after_4() -> bool:
        return len(steps_seen) >= 4

    part = train_lora(model, frames, "a red circle", tmp_path / "part", _cfg(steps=6, every=50),
                      callback=lambda p: steps_seen.append(p.step), should_cancel=cancel_after_4)
    assert part.cancelled and part.steps_done == 4 and part.lora_path is None  # stopped within one step
    assert (tmp_path / "part" / "checkpoint.pt").is_file()
    resumed = train_lora(build_tiny_model(), frames, "a red circle", tmp_path / "part", _cfg(steps=6, every=50))
    assert resumed.steps_done == 6 and not resumed.cancelled
    assert [r["loss"] for r in resumed.losses] == pytest.approx([r["loss"] for r in full.losses], rel=1e-5)
    sa = lora_state_dict(full_model)
    m2 = build_tiny_model()
    load_lora(resumed.lora_path, m2)
    sb = lora_state_dict(m2)
    assert all(torch.allclose(sa[k], sb[k], rtol=1e-5, atol=1e-7) for k in sa)
    log = (tmp_path / "part" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [1, 2, 3, 4, 5, 6]


def test_chunked_training(frames, tmp_path):
    model = build_tiny_model()
    r1 = train_lora(model, frames, "a red circle", tmp_path, _cfg(steps=5, every=50), max_steps_this_call=2)
    assert r1.steps_done == 2 and r1.lora_path is None
    r2 = train_lora(model, frames, "a red circle", tmp_path, _cfg(steps=5, every=50), max_steps_this_call=10)
    assert r2.steps_done == 5 and r2.lora_path is not None


def test_non_finite_loss_stops_and_keeps_last_checkpoint(frames, tmp_path, monkeypatch):
    import motion_core.objectives as objectives

    real = objectives.OBJECTIVES["ddpm"]
    calls = {"n": 0}

    def flaky(ctx, z0, text, t, eps):
        calls["n"] += 1
        out = real(ctx, z0, text, t, eps)
        if calls["n"] == 5:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setitem(objectives.OBJECTIVES, "ddpm", flaky)
    with pytest.raises(NonFiniteLossError, match="step 5.*checkpoint \\(step 4\\)"):
        train_lora(build_tiny_model(), frames, "a red circle", tmp_path, _cfg(steps=8, every=2, objective="ddpm"))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["lora"].values())
    assert not (tmp_path / "lora.safetensors").exists()


def test_bad_arguments(frames, tmp_path):
    with pytest.raises(ValueError, match="caption is empty"):
        train_lora(build_tiny_model(), frames, "  ", tmp_path, _cfg())
    cfg = _cfg()
    cfg.train.learning_rate = 50.0
    with pytest.raises(ValueError, match="learning_rate"):
        train_lora(build_tiny_model(), frames, "a cat", tmp_path, cfg)


def test_only_lora_dropout_trains_so_the_first_loss_is_the_base_models(frames, tmp_path):
    # UNet3D's temporal convolutions carry a fixed dropout of 0.1; in train mode it also fires inside the frozen
    # extractor and swamps the motion loss. Step 1 (LoRA B = 0) must see exactly the eval-mode loss of the base.
    from motion_core.attention import MotionFeatureExtractor
    from motion_core.lora_io import add_lora
    from motion_core.models import encode_prompt, encode_video
    from motion_core.objectives import ObjectiveContext, motion_loss
    from motion_core.train import lora_train_mode

    model = build_tiny_model()
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.unet.modules())  # the trap exists
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # diffusers zero-inits each temporal conv's last layer, which hides its dropout: undo it
        for name, p in model.unet.named_parameters():
            if "temp_convs" in name and name.endswith("conv4.3.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    cfg = _cfg(steps=1)
    z0, text = encode_video(model, frames), encode_prompt(model, "a red circle").float()
    gen = torch.Generator().manual_seed(cfg.train.seed)
    lo, hi = cfg.loss.t_range(model.num_train_timesteps)
    t = torch.randint(lo, hi, (1,), generator=gen)
    eps = torch.randn(z0.shape, generator=gen)
    ext = MotionFeatureExtractor(model, None)
    with torch.no_grad():
        want = float(motion_loss(ObjectiveContext(model, cfg.loss, ext), z0, text, t, eps).loss)
    ext.remove()
    res = train_lora(model, frames, "a red circle", tmp_path, cfg)
    assert res.losses[0]["loss"] == pytest.approx(want, rel=1e-4, abs=1e-12)

    fresh = build_tiny_model()
    add_lora(fresh, cfg.lora)
    lora_train_mode(fresh.unet)
    training = [n for n, m in fresh.unet.named_modules() if m.training]
    assert training and all("lora_dropout" in n for n in training)


def test_adam_steps_do_not_depend_on_the_motion_losss_scale(frames, tmp_path):
    # The motion loss's gradients are ~1e-10 per element (the embedded model and this tiny one). With torch's
    # eps = 1e-8 Adam's step would shrink with the loss's arbitrary scale (lambda, MSE reduction); with the
    # default eps, lambdas of 2000 and 200000 take nearly the same steps.
    bs = []
    for lam in (2000.0, 200000.0):
        cfg = _cfg(steps=3)
        cfg.loss.lambda_ca = cfg.loss.lambda_tsa = lam
        model = build_tiny_model()
        train_lora(model, frames, "a red circle", tmp_path / str(lam), cfg)
        state = lora_state_dict(model)
        bs.append(torch.cat([v.flatten() for k, v in sorted(state.items()) if "lora_B" in k]))  # B starts at 0
    assert bs[0].abs().max() > 0  # the LoRA did move
    assert float((bs[0] - bs[1]).norm() / bs[1].norm()) < 0.1  # measured: 0.05 (eps 1e-12), 0.91 (eps 1e-8)


class _Payload:
    """A pickle that runs code when loaded without ``weights_only``: it leaves a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_damaged_checkpoint_is_named_and_left_alone(frames, tmp_path):
    from motion_core.train import CheckpointError

    run = tmp_path / "run"
    train_lora(build_tiny_model(), frames, "a red circle", run, _cfg(steps=2, every=1, objective="ddpm"))
    ckpt = run / "checkpoint.pt"
    good = ckpt.read_bytes()
    marker = tmp_path / "pwned"
    other_rank = _cfg(steps=4, every=1, objective="ddpm")
    other_rank.lora.rank = 2  # a checkpoint of another run (rank 4) does not fit this one
    damaged = {
        "truncated": good[: len(good) // 2],
        "foreign pickle": None,
        "not a dict": None,
    }
    torch.save(_Payload(marker), tmp_path / "payload.pt")
    damaged["foreign pickle"] = (tmp_path / "payload.pt").read_bytes()
    torch.save([1, 2, 3], tmp_path / "list.pt")
    damaged["not a dict"] = (tmp_path / "list.pt").read_bytes()
    for what, data in damaged.items():
        ckpt.write_bytes(data)
        model = build_tiny_model()
        with pytest.raises(CheckpointError, match="checkpoint.pt is damaged") as err:
            train_lora(model, frames, "a red circle", run, _cfg(steps=4, every=1, objective="ddpm"))
        assert err.value.path == ckpt, what
        assert ckpt.read_bytes() == data, what  # left as it is, for a look
        assert not marker.exists(), what  # weights_only: the pickle's code never ran
    ckpt.write_bytes(good)
    with pytest.raises(CheckpointError, match=r"other settings: lora.rank 4 \(this run: 2\)"):
        train_lora(build_tiny_model(), frames, "a red circle", run, other_rank)
    assert ckpt.read_bytes() == good
    import pickle

    assert pickle.loads(pickle.dumps(CheckpointError(ckpt, "x"))).path == ckpt  # crosses ZeroGPU's process gap
    # Starting over (resume=False) replaces the damaged file instead of reading it.
    ckpt.write_bytes(damaged["truncated"])
    res = train_lora(build_tiny_model(), frames, "a red circle", run, _cfg(steps=2, every=1, objective="ddpm"),
                     resume=False)
    assert res.steps_done == 2 and torch.load(ckpt, weights_only=True)["step"] == 2


def test_a_checkpoint_resumes_only_a_run_with_its_learning_settings(frames, tmp_path):
    from motion_core.train import RESUME_MAY_CHANGE, CheckpointError, learning_settings

    run = tmp_path / "run"
    train_lora(build_tiny_model(), frames, "a red circle", run, _cfg(steps=4, every=1, objective="ddpm"),
               max_steps_this_call=2)
    ckpt, config = run / "checkpoint.pt", run / "config.json"
    kept = ckpt.read_bytes(), config.read_text()
    changes = {"learning rate": ("train", "learning_rate", 1e-3), "objective": ("loss", "objective", "frame-diff"),
               "t range": ("loss", "t_min", 300), "LoRA targets": ("lora", "spatial_targets", ["attn1"])}
    for what, (section, key, value) in changes.items():
        cfg = _cfg(steps=4, every=1, objective="ddpm")
        setattr(getattr(cfg, section), key, value)
        with pytest.raises(CheckpointError, match=rf"other settings: {section}.{key} .*\(this run: "):
            train_lora(build_tiny_model(), frames, "a red circle", run, cfg)
        assert (ckpt.read_bytes(), config.read_text()) == kept, what  # the run's files as they were
    with pytest.raises(CheckpointError, match="other settings: caption"):
        train_lora(build_tiny_model(), frames, "a blue star", run, _cfg(steps=4, every=1, objective="ddpm"))
    # how it is computed, how often it checkpoints and how long it goes on may change: it resumes
    cfg = _cfg(steps=5, every=2, objective="ddpm")
    cfg.train.precision, cfg.sample.lora_cutoff = "fp32", 300
    res = train_lora(build_tiny_model(), frames, "a red circle", run, cfg)
    assert res.steps_done == 5 and [r["step"] for r in res.losses] == [1, 2, 3, 4, 5]
    assert {"train.steps", "train.precision", "sample"} <= set(RESUME_MAY_CHANGE)
    recorded = json.loads(learning_settings(cfg))
    assert "train.steps" not in recorded and "train.seed" in recorded and "caption" in recorded
    # a checkpoint from before settings were recorded resumes as it did
    state = torch.load(ckpt, weights_only=True)
    del state["settings"]
    torch.save(state, ckpt)
    cfg = _cfg(steps=6, every=1, objective="ddpm")
    cfg.train.learning_rate = 1e-3
    assert train_lora(build_tiny_model(), frames, "a red circle", run, cfg).steps_done == 6


def test_a_resumed_run_says_so_and_its_rate_counts_only_new_steps(frames, tmp_path, monkeypatch):
    import types

    import motion_core.train as train_mod

    run = tmp_path / "run"
    train_lora(build_tiny_model(), frames, "a red circle", run, _cfg(steps=6, every=1, objective="ddpm"),
               max_steps_this_call=4)
    clock = iter(range(1000))  # every clock read is one second later
    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    seen = []
    train_lora(build_tiny_model(), frames, "a red circle", run, _cfg(steps=6, every=1, objective="ddpm"),
               callback=seen.append)
    assert (seen[0].phase, seen[0].step, seen[0].total) == ("resuming", 4, 6)
    first = next(p for p in seen if p.phase == "training")
    assert first.step == 5 and first.steps_per_sec == pytest.approx(1.0)  # 1 step in 1 s, not 5 steps in 1 s
    assert first.eta_sec == pytest.approx(1.0)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_gives_the_model_its_own_weight_dtype_back(frames, tmp_path, precision):
    # Half base weights stay half during a bf16 run except the extractor's path (fp32, for a precise motion signal);
    # an fp32 run upcasts everything. Either way inversion and sampling afterwards run at the model's own dtype.
    model = build_tiny_model()
    z0 = encode_video(model, frames)
    model.unet.to(torch.bfloat16)
    seen = []

    def look(p) -> None:
        u = model.unet
        seen.append((u.conv_in.weight.dtype, u.down_blocks[0].resnets[0].conv1.weight.dtype, u.conv_out.weight.dtype))

    cfg = _cfg(steps=2)
    cfg.train.precision = precision
    res = train_lora(model, z0, "a red circle", tmp_path, cfg, callback=look)
    assert res.steps_done == 2 and all(r["loss"] > 0 for r in res.losses)
    during = (torch.float32, torch.float32, torch.bfloat16 if precision == "bf16" else torch.float32)
    assert seen[0] == during
    for n, p in model.unet.named_parameters():
        assert p.dtype == (torch.float32 if "lora_" in n else torch.bfloat16), n


def test_auto_precision_is_fp16_on_a_gpu_without_bf16(monkeypatch):
    # T4 / V100: an fp32 denoiser would double memory and time; fp16 runs with the trainer's GradScaler.
    from motion_core.train import resolve_amp

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp("auto", cuda) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", cuda) == torch.bfloat16
    assert resolve_amp("auto", torch.device("cpu")) is None and resolve_amp("fp32", cuda) is None
