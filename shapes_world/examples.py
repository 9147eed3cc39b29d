"""Write the example reference clips of the app and the README (small MP4s that browsers play).

    python -m shapes_world.examples --out assets/examples                 # for the embedded model's world

The examples follow the world of the embedded model (its ``training_info.json`` names it): for the paths world
(the second design) they are the transfer ladder's six references from the training families
(``ladder.REFERENCES[:6]``: a curve, an arc, a bounce, a wiggle, a zoom and a camera pan), so what a user tries
first is what the model card measured; for the first world, six of its named motions. They are rendered at
128 x 128 (sharp in the page) with the model's frames at 8 fps; the reader resamples them to the model's size.
``examples.json`` lists file, caption and motion.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from motion_core.models import DEFAULT_MODEL_DIR
from motion_core.video import write_mp4

from . import ladder, paths, world

FIRST_WORLD = [
    ("zigzag", dict(shape="circle", colour="red", background="plain", bg_colour="grey", motion="zigzag_right")),
    ("orbit", dict(shape="square", colour="yellow", background="gradient", bg_colour="blue", motion="orbit_ccw")),
    ("zoom", dict(shape="star", colour="orange", background="plain", bg_colour="black", motion="zoom_in")),
    ("pan", dict(shape="triangle", colour="white", background="striped", bg_colour="blue", motion="pan_right")),
    ("bounce", dict(shape="cross", colour="cyan", background="dotted", bg_colour="brown", motion="bounce")),
    ("diagonal", dict(shape="circle", colour="green", background="checkered", bg_colour="grey", motion="up_left")),
]


def model_world(folder: Path = DEFAULT_MODEL_DIR) -> str:
    """The world a model folder was trained on (records from before the second world name none: the first)."""
    record = folder / "training_info.json"
    return json.loads(record.read_text())["info"].get("world", "shapes") if record.is_file() else "shapes"


def clips(world_name: str, size: int, frames: int) -> list[tuple[str, world.Clip, str]]:
    """(file stem, rendered clip, motion name) of each example of a world."""
    if world_name == "paths":
        return [(fam, paths.render(paths.make_spec(s, c, bg, bgc, fam, seed=seed, frames=frames, height=size,
                                                   width=size)), fam)
                for s, c, bg, bgc, fam, seed in ladder.REFERENCES[:6]]
    return [(name, world.render(world.make_spec(**kw, seed=i, frames=frames, height=size, width=size)), kw["motion"])
            for i, (name, kw) in enumerate(FIRST_WORLD)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/examples", help="folder to write")
    ap.add_argument("--world", choices=("paths", "shapes"), default=None,
                    help="the world to draw (default: the embedded model's)")
    ap.add_argument("--size", type=int, default=128, help="pixels (height = width)")
    ap.add_argument("--frames", type=int, default=None, help="frames (default: the world's: 8 paths, 12 shapes)")
    ap.add_argument("--fps", type=float, default=8.0, help="frames per second (the model's)")
    args = ap.parse_args(argv)
    name = args.world or model_world()
    frames = args.frames or (paths.FRAMES if name == "paths" else 12)
    out = Path(args.out)
    listing = []
    for stem, clip, motion in clips(name, args.size, frames):
        write_mp4(clip.frames, out / f"{stem}.mp4", fps=args.fps)
        listing.append({"file": f"{stem}.mp4", "caption": clip.caption, "motion": motion})
    (out / "examples.json").write_text(json.dumps(listing, indent=2) + "\n")
    print(json.dumps(listing, indent=2))


if __name__ == "__main__":
    main()
