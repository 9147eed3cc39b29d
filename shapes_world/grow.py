"""Start a UNet from a trained one: grow it one layer a block deeper, or carry its weights into another layout.

    python -m shapes_world.recipe --continue-from assets/shapes-t2v --grow --out runs/m ...   # then train on
    python -m shapes_world.recipe --vae-factor 2 --init-from assets/shapes-t2v --out runs/m ...  # a finer grid

Training a larger UNet from scratch costs the CPU hours the shipped one took; growing the trained one adds
capacity and lets training go on from where it stands. docs/results.md has what an 80-minute run of it gave.
A UNet for a finer latent grid (``--vae-factor 2``) has the same blocks less the finest level's attention, so
``transplant`` starts it from the trained one's weights instead of from noise.
"""

from __future__ import annotations

import torch

from motion_core.models import UNet3DWithPeft

_PARTS = ("resnets", "temp_convs", "attentions", "temp_attentions")


def grow_unet(unet: UNet3DWithPeft) -> UNet3DWithPeft:
    """The same UNet with one more layer in every block, each new layer starting as the identity.

    The grown UNet computes exactly what ``unet`` does (a test checks it), so training goes on from the trained
    model with more capacity instead of from scratch. A new down layer's resnet has its last convolution zeroed (it
    adds nothing to its input), its temporal convolution its last one (diffusers' own init), its two transformers
    their output projection. A down block gets its new layer last; an up block gets it second, after the layer that
    reads the down block's last skip (which the new down layer passes on unchanged), and its 1 x 1 shortcut passes
    the hidden state through and drops its own skip, so every old up layer still reads the skip it was trained on.
    """
    cfg = dict(unet.config)
    n = cfg["layers_per_block"]
    if not isinstance(n, int):
        raise ValueError(f"grow_unet needs one layers_per_block for all blocks, got {n!r}")
    cfg["layers_per_block"] = n + 1
    grown = UNet3DWithPeft.from_config(cfg)
    if unet.dtype != grown.dtype:
        grown = grown.to(unet.dtype)
    old = unet.state_dict()
    state = {}
    for key in grown.state_dict():
        k = key.split(".")
        if k[0] in ("down_blocks", "up_blocks") and k[2] in _PARTS:
            i, up = int(k[3]), k[0] == "up_blocks"
            if i == (1 if up else n):
                continue  # a new layer: initialised below
            state[key] = old[".".join(k[:3] + [str(i - 1 if up and i > 1 else i)] + k[4:])]
        else:
            state[key] = old[key]
    loaded = grown.load_state_dict(state, strict=False)
    new_layers = tuple(f"{blocks}.{j}.{part}.{i}." for blocks, i in (("down_blocks", n), ("up_blocks", 1))
                       for j in range(len(getattr(grown, blocks))) for part in _PARTS)
    if loaded.unexpected_keys or not all(k.startswith(new_layers) for k in loaded.missing_keys):
        raise RuntimeError(f"grow_unet: weights that do not map ({loaded}); diffusers' UNet3D layout changed?")
    with torch.no_grad():
        for kind, blocks, new in (("down", grown.down_blocks, n), ("up", grown.up_blocks, 1)):
            for b in blocks:
                res = b.resnets[new]
                res.conv2.weight.zero_()
                res.conv2.bias.zero_()
                if kind == "up":  # in = hidden + skip channels; pass the hidden ones through
                    out = res.out_channels
                    res.conv_shortcut.weight.zero_()
                    res.conv_shortcut.weight[:, :out, 0, 0] = torch.eye(out)
                    res.conv_shortcut.bias.zero_()
                b.temp_convs[new].conv4[-1].weight.zero_()
                b.temp_convs[new].conv4[-1].bias.zero_()
                for attn in (getattr(b, "attentions", None), getattr(b, "temp_attentions", None)):
                    if attn is not None:
                        attn[new].proj_out.weight.zero_()
                        attn[new].proj_out.bias.zero_()
    return grown


def transplant(dst: torch.nn.Module, src: torch.nn.Module) -> dict[str, int]:
    """Copy into ``dst`` every tensor of ``src`` whose name ``dst`` also has; returns the counts.

    Meant for two UNets (or text encoders) of one family that differ only in which blocks carry attention, as
    the factor-2 UNet lacks the finest level's: those of ``src``'s tensors are dropped, any of ``dst``'s own that
    ``src`` lacks keep their fresh values. A shared name with another shape means another architecture (other
    widths, another vocabulary), which is refused rather than half-copied.
    """
    theirs, ours = src.state_dict(), dst.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in theirs.items()
             if k in ours and v.shape != ours[k].shape]
    if wrong:
        raise ValueError(f"transplant: {len(wrong)} tensors differ in shape, e.g. {wrong[0]}: not the same family")
    shared = {k: v for k, v in theirs.items() if k in ours}
    if not shared:
        raise ValueError("transplant: no tensor names in common: not the same family")
    dst.load_state_dict(shared, strict=False)
    return {"copied": len(shared), "dropped": len(theirs) - len(shared), "fresh": len(ours) - len(shared)}
