"""The LoRA training loop: one reference clip, one objective, progress callbacks, cancel, checkpoints, resume.

    from motion_core.train import train_lora
    result = train_lora(model, frames, "a red circle on a blue background", "runs/demo", RunConfig())

The reference latents and caption embedding are computed once. Each step draws one (t, eps) from a seeded
generator, so a run repeats exactly and a resumed run continues the same random stream. A checkpoint (LoRA,
optimiser, step, random state, loss log) is written atomically every ``checkpoint_every`` steps and on cancel;
``train_lora`` on the same folder resumes from it. A non-finite loss stops the run with ``NonFiniteLossError``
and leaves the last good checkpoint untouched.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .attention import MotionFeatureExtractor, extractor_path
from .checkpointing import resolve_checkpointing
from .config import RunConfig, check_text
from .lora_io import ADAPTER, add_lora, lora_state_dict, save_lora
from .models import T2VModel, decode_latents, encode_prompt, encode_video
from .objectives import ObjectiveContext, get_objective
from .rundir import CHECKPOINT, LORA_FILE, RunDir

__all__ = ["CHECKPOINT", "LORA_FILE", "CheckpointError", "NonFiniteLossError", "Progress", "TrainResult", "train_lora"]



class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(ValueError):
    """A run's checkpoint cannot be resumed from (truncated, foreign, or from another run); it is left as it is."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"the checkpoint {self.path} is damaged or not from this run ({reason}); it was left as "
                         "it is, and nothing was trained")

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (ZeroGPU) with its own arguments
        return (type(self), (self.path, self.reason))


@dataclass
class Progress:
    step: int  # steps done
    total: int
    loss: float
    parts: dict[str, float]
    steps_per_sec: float
    eta_sec: float
    phase: str = "training"  # "resuming" once, before the first step of a resumed run; "saving" at the end


@dataclass
class TrainResult:
    out_dir: Path
    lora_path: Path | None  # None when cancelled before the end
    steps_done: int
    cancelled: bool
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    recolour_captions: list[str] = field(default_factory=list)  # the recoloured copies' captions, one a copy


def resolve_amp(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the denoiser: None = fp32.

    "auto": bf16 on a CUDA GPU that has it; fp16 (with the trainer's GradScaler) on one that does not (T4, V100),
    where an fp32 denoiser would double the memory and time; fp32 on the CPU, where half precision is not faster.
    """
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _cast_base(unet: torch.nn.Module, names: list[str] | None, dtype: torch.dtype) -> None:
    """Cast the frozen (non-LoRA) weights of the named submodules (None: all) to ``dtype``, in place."""
    mods = [unet] if names is None else [unet.get_submodule(n) for n in names]
    for mod in mods:
        for n, p in mod.named_parameters():
            if "lora_" not in n and p.dtype != dtype:
                p.data = p.data.to(dtype)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lora_train_mode(unet: torch.nn.Module) -> None:
    """Eval mode for the pre-trained UNet, train mode for the LoRA dropouts only.

    ``unet.train()`` would also switch on the dropout (p = 0.1, fixed in diffusers) of every temporal convolution
    of UNet3D, in the denoiser *and* in the frozen feature extractor, which draws its own masks for the target and
    the prediction. Measured on the shipped shapes model: the motion loss of the untouched model is 1.3e-6 in eval
    mode and 0.06 in train mode, so with dropout on the loss and its gradient are almost all dropout noise.
    """
    unet.eval()
    for m in unet.modules():
        drop = getattr(m, "lora_dropout", None)
        if isinstance(drop, torch.nn.Module):
            drop.train()


# The 11 recolourings of a clip: (channel order, inverted), the identity left out.
RECOLOURINGS: tuple[tuple[tuple[int, int, int], bool], ...] = tuple(
    (perm, invert) for invert in (False, True) for perm in itertools.permutations(range(3))
    if invert or perm != (0, 1, 2)
)


def recolourings(frames: torch.Tensor) -> list[torch.Tensor]:
    """The clip ``(F, 3, H, W)`` in its 11 other colourings (``RECOLOURINGS``): RGB channels permuted, and each
    permutation inverted.

    Every pixel moves exactly as before, so the motion is the reference's while object and background change colour
    (grey stays grey under a permutation, white and black swap under inversion). Some may equal the clip (a red
    object on grey is the same with green and blue swapped): they are kept, as when this was measured."""
    out = []
    for perm, invert in RECOLOURINGS:
        f = frames[:, list(perm)]
        out.append(1 - f if invert else f)
    return out


def blurred(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """The clip ``(F, 3, H, W)`` blurred over space by a Gaussian of standard deviation ``sigma`` pixels (taps out to
    ``ceil(3 sigma)`` each side, weights summing to one, edges extended), each frame and channel on its own.

    The object keeps its place in every frame, so the path is the reference's, while its outline goes soft: a
    motion LoRA trained on it has less of the reference's shape to carry into new prompts (docs/method.md,
    section 6). ``sigma`` 0 returns the clip unchanged."""
    if sigma <= 0:
        return frames
    r = math.ceil(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-x**2 / (2 * sigma**2))
    k = (k / k.sum()).to(device=frames.device, dtype=torch.float32)
    n, c, h, w = frames.shape
    f = frames.float().reshape(n * c, 1, h, w)
    # separable: rows, then columns; replicate padding keeps a plain background's colour at the edges
    f = F.conv2d(F.pad(f, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    f = F.conv2d(F.pad(f, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return f.reshape(n, c, h, w).to(frames.dtype)


# How far (RGB, 0-255) a recoloured colour may lie from the name it is given. The embedded model's colours land
# 14-57 from a name of its palette or 62 and more (inverted yellow, a blue, among them); the ladder measured 60.
RECOLOUR_NAME_TOLERANCE = 60.0


def recolour_caption(caption: str, perm: tuple[int, int, int], invert: bool,
                     names: dict[str, dict[str, Sequence[int]]]) -> str | None:
    """``caption`` with each colour name in it renamed after the recolouring (``perm``, ``invert``); None where a
    colour has no name within ``RECOLOUR_NAME_TOLERANCE`` or the caption names no colour.

    ``names`` maps a context word to colour names (lower case, one or more words) and their RGB: a name followed by
    a context word is looked up in that word's table (``{"background": {"grey": [115, 115, 115]}}``), any other in
    the ``""`` table, so that one word may be two colours ("blue" object, "blue" background). The longest name
    wins ("dark green" before "green"). A name of another table than its place asks for ("red" before "background"
    where only objects are red) cannot be renamed either. A copy whose colours cannot all be named is left out of
    training: a caption that contradicts its pixels is what ties the motion to the look (docs/method.md, section 6)."""
    words = caption.split(" ")
    longest = max((len(n.split(" ")) for table in names.values() for n in table), default=0)
    out: list[str] = []
    renamed, i = False, 0
    while i < len(words):
        hit = None
        for n in range(min(longest, len(words) - i), 0, -1):
            phrase = " ".join(words[i:i + n])
            bare = phrase.rstrip(".,;:!?")
            after = words[i + n].rstrip(".,;:!?").lower() if i + n < len(words) else ""
            table = names.get(after if after in names else "", {})
            if bare.lower() in table:
                hit = (table, bare.lower(), n, phrase[len(bare):])
                break
            if any(bare.lower() in t for t in names.values()):
                return None  # a colour, but not one this place knows: it cannot be renamed
        if hit is None:
            out.append(words[i])
            i += 1
            continue
        table, name, n, tail = hit
        rgb = [float(table[name][c]) for c in perm]
        if invert:
            rgb = [255.0 - v for v in rgb]
        dist, new = min((math.dist(rgb, [float(v) for v in val]), other) for other, val in table.items())
        if dist > RECOLOUR_NAME_TOLERANCE:
            return None
        out.append(new + tail)
        renamed = True
        i += n
    return " ".join(out) if renamed else None


def _replace_some(batch: tuple[torch.Tensor, ...], others: tuple[torch.Tensor, ...], share: float,
                  gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``batch`` with each item, with probability ``share``, replaced by a random one of ``others``: the same item of
    every tensor in ``others`` (a copy's latents with its caption), each shaped like its tensor of ``batch``."""
    n = batch[0].shape[0]
    swap = torch.rand(n, generator=gen) < share
    pick = torch.randint(0, others[0].shape[0], (n,), generator=gen)
    out = []
    for b, o in zip(batch, others, strict=True):
        mask = swap.to(b.device).view(-1, *[1] * (b.ndim - 1))
        out.append(torch.where(mask, o[pick.to(o.device)], b))
    return tuple(out)


def train_lora(
    model: T2VModel,
    reference: torch.Tensor,
    caption: str,
    out_dir: str | os.PathLike,
    cfg: RunConfig | None = None,
    callback: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = True,
    max_steps_this_call: int | None = None,
) -> TrainResult:
    """Learn the reference's motion as a LoRA; write ``lora.safetensors`` and ``config.json`` in ``out_dir``.

    ``reference``: frames ``(F, 3, H, W)`` in [0, 1], or latents ``(1, C, F, h, w)`` already encoded.
    ``max_steps_this_call`` stops (with a checkpoint) after that many steps, for hosts with a per-call time limit
    (ZeroGPU); a later call resumes. Cancelling via ``should_cancel`` also checkpoints and returns.
    """
    cfg = cfg or RunConfig()
    cfg.validate()
    cfg.fill_from_model(model)  # settings left to the model (Adam eps ...) from its sidecar; recorded below
    caption = check_text(caption, "caption")
    run = RunDir(out_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    cfg.caption = caption
    cfg.model = model.name  # the hub id or folder name: config.json travels with the LoRA
    t_start = time.perf_counter()
    dev = model.device
    tc, lc = cfg.train, cfg.loss

    # 1. Precision. LoRA weights train in fp32. Without autocast the whole UNet runs in fp32. With autocast the
    #    frozen weights stay as loaded (half on a GPU) except the motion extractor's path (stem and blocks up to
    #    the capture block), cast to fp32: the motion signal is the difference of two extractor passes on inputs
    #    that differ by a few thousandths (docs/method.md), which half precision rounds away. Every weight gets its own
    #    dtype back when training ends, so inversion and sampling afterwards run at the model's speed.
    #    (The casts happen right before the loop, inside whose ``finally`` the dtypes are restored.)
    amp = resolve_amp(tc.precision, dev)
    grad_ckpt = resolve_checkpointing(tc.grad_checkpointing, dev)

    # 2. The reference's latents (blurred, and its recoloured copies', if asked) and caption embedding, computed once.
    if reference.ndim not in (4, 5):
        raise ValueError(
            f"reference must be frames (F, 3, H, W) or latents (1, C, F, h, w), got {tuple(reference.shape)}"
        )
    frames, z0 = (reference, None) if reference.ndim == 4 else (None, reference.float().to(dev))
    if tc.recolour > 0 or tc.blur > 0:
        # from latents (the CLI's and the app's cached reference), the frames the VAE decodes them to
        frames = blurred(decode_latents(model, z0)[0] if frames is None else frames.float().to(dev), tc.blur)
    if z0 is None or tc.blur > 0:
        z0 = encode_video(model, frames)
    text = encode_prompt(model, caption).float()
    recoloured = recoloured_text = None
    copy_captions: list[str] = []
    if tc.recolour > 0:
        copies = recolourings(frames)
        if tc.recolour_names is None:  # every copy under the reference's caption (its embedding, not re-encoded)
            keep, copy_captions = list(range(len(copies))), [caption] * len(copies)
            recoloured_text = text.expand(len(keep), -1, -1)
        else:  # only the copies whose colours can be named, each under its renamed caption
            named = [recolour_caption(caption, perm, inv, tc.recolour_names) for perm, inv in RECOLOURINGS]
            keep = [k for k, c in enumerate(named) if c is not None]
            copy_captions = [named[k] for k in keep]  # type: ignore[misc]
            recoloured_text = encode_prompt(model, copy_captions).float() if keep else None
        if keep:
            recoloured = torch.cat([encode_video(model, copies[k]) for k in keep])
    pool = encode_prompt(model, list(tc.caption_pool)).float() if tc.caption_dropout > 0 else None

    # 3. A fresh LoRA, optimiser, seeded random stream; then the last checkpoint if there is one.
    params = add_lora(model, cfg.lora, seed=tc.seed)
    opt = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay, betas=tc.adam_betas,
                            eps=tc.adam_eps)
    gen = torch.Generator(device="cpu").manual_seed(tc.seed)
    torch.manual_seed(tc.seed)  # LoRA dropout draws from the global stream
    step, losses = 0, []
    ckpt_path = run.checkpoint
    settings = learning_settings(cfg)  # recorded in every checkpoint; a resume must match the one it reads
    if resume and ckpt_path.is_file():
        step, losses = _load_checkpoint(ckpt_path, model, opt, gen, tc.steps, dev, settings)
        if callback is not None:
            callback(Progress(step, tc.steps, losses[-1]["loss"] if losses else math.nan, {}, 0.0, math.nan,
                              "resuming"))
    elif ckpt_path.is_file():
        ckpt_path.unlink()  # starting over: the old run's checkpoint must not be mistaken for this one's
    cfg.save(run.config)  # only now: a refused checkpoint leaves its run's config.json as it was
    ckpt_step = step  # the step the checkpoint on disk holds
    log_path = run.log
    # The log restarts from what the checkpoint knows, so steps redone after a crash are not listed twice.
    log_path.write_text("".join(json.dumps(r) + "\n" for r in losses))
    # fp16 gradients of a loss of ~1e-6 underflow without loss scaling (measured: all zero on a tiny UNet).
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None

    # the reference repeated for the step's batch of (t, eps) draws (views: no copies)
    zb, textb = z0.expand(tc.batch_size, -1, -1, -1, -1), text.expand(tc.batch_size, -1, -1)
    objective = get_objective(lc.objective)
    extractor = MotionFeatureExtractor(model, lc.capture_blocks, grad_ckpt) if lc.objective == "motion" else None
    ctx = ObjectiveContext(model, lc, extractor, amp, gen, grad_ckpt)
    lo, hi = lc.t_range(model.num_train_timesteps)

    def checkpoint() -> None:
        nonlocal ckpt_step
        ckpt_step = step
        state = {"step": step, "lora": lora_state_dict(model), "optimizer": opt.state_dict(),
                 "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "losses": losses,
                 "settings": settings}
        if dev.type == "cuda":  # LoRA dropout on a GPU draws from the device's stream: a resume must continue it
            state["cuda_rng"] = torch.cuda.get_rng_state(dev)
        _atomic_save(state, ckpt_path)

    own_dtypes = [(p, p.dtype) for p in model.unet.parameters() if not p.requires_grad]  # frozen ones: step 1
    if amp is None:
        _cast_base(model.unet, None, torch.float32)
    elif lc.objective == "motion":
        _cast_base(model.unet, extractor_path(model.unet, lc.capture_blocks or model.capture_blocks), torch.float32)
    lora_train_mode(model.unet)
    stop_at = tc.steps if max_steps_this_call is None else min(tc.steps, step + max_steps_this_call)
    cancelled = False
    t_loop, step0 = time.perf_counter(), step
    try:
        while step < stop_at:
            if should_cancel is not None and should_cancel():
                cancelled = True
                break
            # 4. One step: a new (t, eps) from the seeded stream, the objective, AdamW.
            t = torch.randint(lo, hi, (tc.batch_size,), generator=gen).to(dev)
            eps = torch.randn((tc.batch_size, *z0.shape[1:]), generator=gen).to(dev)
            # (drawn only when asked, so that runs without these options keep their random stream)
            step_z0, step_text = zb, textb
            if recoloured is not None:
                step_z0, step_text = _replace_some((zb, textb), (recoloured, recoloured_text), tc.recolour, gen)
            if pool is not None:
                (step_text,) = _replace_some((step_text,), (pool,), tc.caption_dropout, gen)
            out_loss = objective(ctx, step_z0, step_text, t, eps)
            loss = out_loss.loss
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the loss became {float(loss)} at step {step + 1} (t={t.tolist()}); training stopped. The last "
                    f"checkpoint (step {ckpt_step}) is kept. Try a lower learning rate or fp32 precision."
                )
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if tc.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            step += 1
            t_log = int(t[0]) if tc.batch_size == 1 else [int(x) for x in t]
            rec = {"step": step, "t": t_log, "loss": float(loss.detach()), **out_loss.parts}
            losses.append(rec)
            with log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if step % tc.checkpoint_every == 0:
                checkpoint()
            if callback is not None:
                rate = (step - step0) / max(time.perf_counter() - t_loop, 1e-9)
                callback(Progress(step, tc.steps, rec["loss"], dict(out_loss.parts), rate,
                                  (tc.steps - step) / max(rate, 1e-9)))
    finally:
        model.unet.eval()
        if extractor is not None:
            extractor.remove()
        for p in params:
            p.grad = None
        for p, dtype in own_dtypes:  # the model's own weight dtypes back (step 1)
            if p.dtype != dtype:
                p.data = p.data.to(dtype)

    lora_path = None
    if step < tc.steps:
        if step > ckpt_step:
            checkpoint()  # cancel or chunk boundary: keep everything done so far
    else:
        if callback is not None:
            callback(Progress(step, tc.steps, losses[-1]["loss"] if losses else math.nan, {}, 0.0, 0.0, "saving"))
        meta = {"objective": lc.objective, "steps": step, "lambda_ca": lc.lambda_ca, "lambda_tsa": lc.lambda_tsa,
                "frames": int(z0.shape[2]), "fps": cfg.video.fps, "height": int(z0.shape[3] * model.vae_scale),
                "width": int(z0.shape[4] * model.vae_scale), "caption": caption, "seed": tc.seed,
                "learning_rate": tc.learning_rate}
        lora_path = save_lora(run.lora, model, cfg.lora, meta, cfg.to_dict())
        checkpoint()
    for p in params:
        p.requires_grad_(False)
    return TrainResult(run.path, lora_path, step, cancelled, losses, time.perf_counter() - t_start, copy_captions)


# Settings that say how a run is computed, how often it checkpoints, how long it goes on or how its LoRA is
# sampled, not what it learns: a resume may change them (more steps, another precision on another GPU). Every
# other setting must be the checkpoint's, or the resumed LoRA would be half one run and half another.
RESUME_MAY_CHANGE = ("sample", "video.max_duration_sec", "video.max_source_pixels", "video.max_file_mb",
                     "train.steps", "train.checkpoint_every", "train.precision", "train.grad_checkpointing")


def learning_settings(cfg: RunConfig) -> str:
    """The settings a checkpoint shares with any run that resumes it, as JSON ``{"section.key": value}``."""
    flat: dict[str, Any] = {}
    for name, value in cfg.to_dict().items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, v in items:
            k = name if key is None else f"{name}.{key}"
            if k not in RESUME_MAY_CHANGE and name not in RESUME_MAY_CHANGE:
                flat[k] = v
    return json.dumps(flat, sort_keys=True, default=str)


def _settings_changed(saved: str, now: str) -> list[str]:
    """``"key saved (this run: value)"`` for each setting that differs; keys that a newer version added are skipped."""
    old, new = json.loads(saved), json.loads(now)
    return [f"{k} {json.dumps(old[k])[:60]} (this run: {json.dumps(new[k])[:60]})"
            for k in sorted(old) if k in new and old[k] != new[k]]


def _load_checkpoint(path: Path, model: T2VModel, opt: torch.optim.Optimizer, gen: torch.Generator, total: int,
                     dev: torch.device, settings: str | None = None) -> tuple[int, list]:
    """Restore a run from its checkpoint; any problem is a ``CheckpointError`` naming the file, never a traceback.

    ``settings`` (``learning_settings`` of the resuming run) must equal the checkpoint's where it recorded them
    (older checkpoints did not): resuming with another learning rate, objective, caption, ... would silently mix
    two runs.

    ``weights_only=True`` refuses foreign pickles (no code runs); the contents are checked before they are used,
    so a refused checkpoint changes neither the LoRA nor the random streams.
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated (EOFError, RuntimeError), foreign (UnpicklingError), unreadable (OSError)
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise CheckpointError(path, f"{type(err).__name__}: {first}") from err
    try:
        if not isinstance(state, dict):
            raise TypeError(f"a {type(state).__name__}, not a checkpoint")
        step, losses = state["step"], state["losses"]
        if not isinstance(step, int) or not 0 <= step <= total or not isinstance(losses, list):
            raise ValueError(f"step {str(step)[:20]} of a {total}-step run")
        saved = state.get("settings")
        if settings is not None and saved is not None:
            if not isinstance(saved, str):
                raise TypeError(f"its settings are a {type(saved).__name__}, not JSON text")
            changed = _settings_changed(saved, settings)
            if changed:
                raise ValueError(f"it was made with other settings: {'; '.join(changed[:4])}"
                                 + (f" and {len(changed) - 4} more" if len(changed) > 4 else ""))
        sd = {k.removeprefix("unet."): v for k, v in state["lora"].items()}
        want = get_peft_model_state_dict(model.unet, adapter_name=ADAPTER)
        if set(sd) != set(want) or any(sd[k].shape != want[k].shape for k in want):
            raise ValueError("its LoRA does not match this run's (another rank or model?)")
        gen_state, rng_state = state["generator"], state["torch_rng"]
        torch.Generator().set_state(gen_state)  # trial: refuses a state of the wrong kind
        if not (isinstance(rng_state, torch.Tensor) and rng_state.dtype == torch.uint8
                and rng_state.shape == torch.get_rng_state().shape):
            raise ValueError("its random state is not torch's")
        fresh = opt.state_dict()  # a new optimiser's (empty) state, to put back if the checkpoint's is refused
        try:
            opt.load_state_dict(state["optimizer"])
        except Exception:
            opt.load_state_dict(fresh)
            raise
    except Exception as err:
        raise CheckpointError(path, f"{type(err).__name__}: {str(err)[:200]}") from err
    set_peft_model_state_dict(model.unet, sd, adapter_name=ADAPTER)
    gen.set_state(gen_state)
    torch.set_rng_state(rng_state)
    if dev.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], dev)
    return int(step), list(losses)
