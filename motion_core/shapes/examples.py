"""Write the example reference clips of the app and the README (small MP4s that browsers play).

    python -m motion_core.shapes.examples --out assets/examples

Each clip is a rendered shapes-world video with a distinct motion; ``examples.json`` lists file, caption and
motion. They are rendered at 128 x 128 (twice the embedded model's size, so they look sharp in the page) with the
model's 12 frames at 8 fps; the reader resamples them to the model's size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..video import write_mp4
from . import world

EXAMPLES = [
    ("zigzag", dict(shape="circle", colour="red", background="plain", bg_colour="grey", motion="zigzag_right")),
    ("orbit", dict(shape="square", colour="yellow", background="gradient", bg_colour="blue", motion="orbit_ccw")),
    ("zoom", dict(shape="star", colour="orange", background="plain", bg_colour="black", motion="zoom_in")),
    ("pan", dict(shape="triangle", colour="white", background="striped", bg_colour="blue", motion="pan_right")),
    ("bounce", dict(shape="cross", colour="cyan", background="dotted", bg_colour="brown", motion="bounce")),
    ("diagonal", dict(shape="circle", colour="green", background="checkered", bg_colour="grey", motion="up_left")),
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/examples", help="folder to write")
    ap.add_argument("--size", type=int, default=128, help="pixels (height = width)")
    ap.add_argument("--frames", type=int, default=12, help="frames (the model's)")
    ap.add_argument("--fps", type=float, default=8.0, help="frames per second (the model's)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    listing = []
    for i, (name, kw) in enumerate(EXAMPLES):
        clip = world.render(world.make_spec(**kw, seed=i, frames=args.frames, height=args.size, width=args.size))
        write_mp4(clip.frames, out / f"{name}.mp4", fps=args.fps)
        listing.append({"file": f"{name}.mp4", "caption": clip.caption, "motion": kw["motion"]})
    (out / "examples.json").write_text(json.dumps(listing, indent=2) + "\n")
    print(json.dumps(listing, indent=2))


if __name__ == "__main__":
    main()
