"""Prompt following of a shapes-world model at several guidance scales, on prompts the model card does not use.

    python benchmarks/guidance_sweep.py --guidance 3,5,7.5,12                # embedded model, 40 prompts each
    python benchmarks/guidance_sweep.py --model runs/m --n 10 --guidance 7.5

Runs the prompt-following check of the model's world (base model, beta = 0, the model's DDIM steps):
``shapes_world.card.prompt_following`` for a paths-world model, ``shapes_world.evaluate.prompt_following`` (25
steps) for the first world, with seed 30000, so the card's prompts (seed 20000) stay held out from any choice made
here. Prints one JSON line per guidance scale: colour, shape and background-colour accuracy, the coherent
fraction and (paths world) the shape accuracy per prompted shape. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from motion_core.models import DEFAULT_MODEL_DIR, load_model  # noqa: E402
from shapes_world import card, evaluate  # noqa: E402
from shapes_world.examples import model_world  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--n", type=int, default=40, help="prompts per guidance scale")
    ap.add_argument("--guidance", default="3,5,7.5,12", help="comma-separated guidance scales")
    ap.add_argument("--steps", type=int, default=25, help="DDIM sampling steps (first-world models)")
    args = ap.parse_args(argv)
    model = load_model(args.model, device="cpu")
    paths_world = model_world(Path(args.model)) == "paths"
    for g in (float(x) for x in args.guidance.split(",")):
        t = time.perf_counter()
        if paths_world:
            res = card.prompt_following(model, args.n, seed=30_000, guidance=g)
        else:
            res = evaluate.prompt_following(model, args.n, args.steps, g, seed=30_000)
        rows = res.pop("rows")
        if paths_world:  # [drawn right, asked] per prompted shape: which shapes the misses are
            res["by_shape"] = card.shape_counts(rows)
        print(json.dumps({"guidance": g, **res, "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
