"""Push a finished motion LoRA to the Hugging Face Hub with a generated model card (private by default).

``model_card`` writes the README the Hub shows: YAML front matter (base model when it is a hub id, tags,
pipeline tag), the reference caption, the training and sampling settings, how to use the file, and the sample
videos uploaded with it. ``push_lora`` checks its arguments, checks that the token may write, creates the repo
(private unless asked otherwise) and uploads everything in one commit. The token is used for that call only:
never written to disk or logged.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_NAME_RE = re.compile(r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?")
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
TAGS = ("text-to-video", "lora", "motion-customization", "motionmatcher", "video-diffusion")


class HubError(ValueError):
    """The push cannot be done; the message says why (bad repo name, token without write access, network)."""


def check_repo_id(repo_id: str, user: str | None = None) -> str:
    """``owner/name`` (or ``name``, then ``user/name``), each part as the Hub allows it."""
    repo_id = (repo_id or "").strip()
    if not repo_id:
        raise HubError("Give a repository name, e.g. 'your-name/my-motion-lora'.")
    parts = repo_id.split("/")
    if len(parts) == 1 and user:
        parts = [user, parts[0]]
    if len(parts) != 2 or not all(REPO_NAME_RE.fullmatch(p) for p in parts) or any(
            "--" in p or ".." in p for p in parts):
        raise HubError(f"{repo_id!r} is not a valid repository id: use 'owner/name' with letters, digits, '-', "
                       "'_' or '.', at most 96 characters each.")
    return "/".join(parts)


def check_token(token: str) -> str:
    token = (token or "").strip()
    if not token:
        raise HubError("Paste a Hugging Face access token with write access (huggingface.co/settings/tokens).")
    if any(c.isspace() for c in token) or len(token) < 8:
        raise HubError("That does not look like a Hugging Face access token.")
    return token


def _yaml_list(items: list[str]) -> str:
    return "\n".join(f"- {json.dumps(x)}" for x in items)


def model_card(repo_id: str, base_model: str, caption: str, run_config: dict[str, Any] | None,
               meta: dict[str, Any] | None, samples: list[str] | None = None) -> str:
    """The README.md of the model repo. Strings go through JSON quoting, which is valid YAML for any caption."""
    meta = meta or {}
    cfg = run_config or {}
    train, lora, loss = cfg.get("train", {}), cfg.get("lora", {}), cfg.get("loss", {})
    sample, video = cfg.get("sample", {}), cfg.get("video", {})
    front = ["---"]
    if HUB_ID_RE.fullmatch(base_model or ""):
        front.append(f"base_model: {json.dumps(base_model)}")  # the Hub validates this field: ids only
    front += ["library_name: diffusers", "pipeline_tag: text-to-video", "tags:", _yaml_list(list(TAGS)), "---", ""]
    rows = [
        ("base model", f"`{base_model}`"),
        ("reference caption", caption),
        ("objective", loss.get("objective", meta.get("objective", "motion"))),
        ("steps", train.get("steps", meta.get("steps"))),
        ("learning rate", train.get("learning_rate", meta.get("learning_rate"))),
        ("LoRA rank", lora.get("rank", meta.get("rank"))),
        ("λ_CA / λ_TSA", f"{loss.get('lambda_ca', meta.get('lambda_ca'))} / "
                         f"{loss.get('lambda_tsa', meta.get('lambda_tsa'))}"),
        ("seed", train.get("seed", meta.get("seed"))),
        ("frames, fps, size", f"{video.get('num_frames', meta.get('frames'))} frames at "
                              f"{video.get('fps', meta.get('fps'))} fps, "
                              f"{video.get('width', meta.get('width'))}×{video.get('height', meta.get('height'))}"),
        ("suggested β (motion fidelity vs. look leakage)", sample.get("beta", 0.3)),
    ]
    table = "\n".join(["| setting | value |", "|---|---|"] +
                      [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows if v is not None])
    name = repo_id.split("/")[-1]
    nf, fps = video.get("num_frames", meta.get("frames", 16)), video.get("fps", meta.get("fps", 8))
    vh, vw = video.get("height", meta.get("height", 384)), video.get("width", meta.get("width", 384))
    body = f"""# {name}: a motion LoRA

This LoRA holds the **motion** of one reference video, learned with MotionMatcher (motion feature matching,
[arXiv 2502.13234](https://arxiv.org/abs/2502.13234)). Load it into the base model and prompt for any scene: the
new video moves like the reference.

Reference caption: "{caption}"

## Settings

{table}

## Files

- `lora.safetensors`: the LoRA in diffusers' format (`unet.`-prefixed peft keys) with MotionMatcher metadata.
- `config.json`: every setting of the run, as the MotionMatcher tools read it back.

## How to use

With the MotionMatcher code (`motion_core`): invert the reference video once, then sample from noise blended
with it by β (higher β follows the motion more closely, and more of the reference's look leaks in).

```python
from motion_core.config import SampleConfig, VideoConfig
from motion_core.lora_io import load_lora
from motion_core.models import encode_video, load_model
from motion_core.sample import invert, sample
from motion_core.video import read_video, write_mp4

model = load_model({json.dumps(base_model)})
load_lora("lora.safetensors", model)
frames = read_video("reference.mp4", VideoConfig(num_frames={nf}, fps={fps}, height={vh}, width={vw}))
cfg = SampleConfig.for_model(model, {{"beta": 0.3, "seed": 0}})  # the model's own steps, guidance, cut-off
eps_inv = invert(model, encode_video(model, frames), num_steps=cfg.num_inference_steps)
out = sample(model, "a dog running on the beach", cfg, eps_inv=eps_inv)
write_mp4(out.frames[0], "out.mp4", fps={fps})
```
"""
    if samples:
        body += "\n## Samples\n\n" + "\n".join(f"- [{Path(s).name}]({s})" for s in samples) + "\n"
    return "\n".join(front) + body


def push_lora(files: dict[str, Path], card: str, repo_id: str, token: str, private: bool = True,
              api_factory: Callable[..., Any] | None = None) -> str:
    """Upload ``files`` (name in the repo -> local path) and ``card`` as README.md; returns the repo's URL.

    ``api_factory(token=...)`` makes the ``HfApi`` (tests pass a fake one).
    """
    token = check_token(token)
    if api_factory is None:
        from huggingface_hub import HfApi

        api_factory = HfApi
    api = api_factory(token=token)
    try:
        who = api.whoami()
    except Exception as err:
        raise HubError(f"The Hub refused the token or could not be reached: {_short(err)}") from err
    user = who.get("name") if isinstance(who, dict) else None
    repo_id = check_repo_id(repo_id, user)
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role") if isinstance(who, dict) else None
    if role == "read":
        raise HubError("This token can only read. Make a token with write access at huggingface.co/settings/tokens.")
    with tempfile.TemporaryDirectory(prefix="mm-hub-") as tmp:
        staging = Path(tmp)
        for name, src in files.items():
            dest = staging / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        (staging / "README.md").write_text(card, encoding="utf-8")
        try:
            url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(folder_path=str(staging), repo_id=repo_id, repo_type="model",
                              commit_message="Upload MotionMatcher motion LoRA")
        except Exception as err:
            raise HubError(f"Upload to {repo_id} failed: {_short(err)}") from err
    return str(getattr(url, "url", None) or url or f"https://huggingface.co/{repo_id}")


def _short(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
