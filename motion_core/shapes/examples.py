"""Write the example reference clips of the app and the README (small MP4s that browsers play).

    python -m motion_core.shapes.examples --out assets/examples

The examples are the transfer ladder's six references from the training families (``ladder.REFERENCES[:6]``:
a curve, an arc, a bounce, a wiggle, a zoom and a camera pan), so what a user tries first is what the model card
measured. They are rendered at 128 x 128 (four times the embedded model's size, so they look sharp in the page)
with the model's 8 frames at 8 fps; the reader resamples them to the model's size. ``examples.json`` lists file,
caption and path family.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..video import write_mp4
from . import ladder, paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/examples", help="folder to write")
    ap.add_argument("--size", type=int, default=128, help="pixels (height = width)")
    ap.add_argument("--frames", type=int, default=paths.FRAMES, help="frames (the model's)")
    ap.add_argument("--fps", type=float, default=8.0, help="frames per second (the model's)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    listing = []
    for shape, colour, bg, bg_colour, family, seed in ladder.REFERENCES[:6]:
        clip = paths.render(paths.make_spec(shape, colour, bg, bg_colour, family, seed=seed, frames=args.frames,
                                            height=args.size, width=args.size))
        write_mp4(clip.frames, out / f"{family}.mp4", fps=args.fps)
        listing.append({"file": f"{family}.mp4", "caption": clip.caption, "motion": family})
    (out / "examples.json").write_text(json.dumps(listing, indent=2) + "\n")
    print(json.dumps(listing, indent=2))


if __name__ == "__main__":
    main()
