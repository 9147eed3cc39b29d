"""Prompt following of a shapes-world model at several guidance scales, on prompts the model card does not use.

    python benchmarks/guidance_sweep.py --guidance 3,5,7.5,12                # embedded model, 40 prompts each
    python benchmarks/guidance_sweep.py --model runs/m --n 10 --guidance 7.5
    python benchmarks/guidance_sweep.py --n 80 --guidance 3 --rescale 0,1 --seed 40000   # guidance rescale too
    python benchmarks/guidance_sweep.py --n 80 --guidance 3 --steps 50 --seed 50000      # more DDIM steps

Runs the prompt-following check of the model's world (base model, beta = 0, the model's DDIM steps unless
``--steps`` says otherwise): ``shapes_world.card.prompt_following`` for a paths-world model,
``shapes_world.evaluate.prompt_following`` (25 steps) for the first world, from seed 30000 (``--seed``; never the
card's 20000 to 20039, so the card's prompts stay held out from any choice made here). ``--rescale`` (paths
world) also sweeps the guidance rescale (``ddim.guide``). Prints one JSON line per setting: colour, shape and
background-colour accuracy, the coherent fraction and (paths world) the shape accuracy per prompted shape. Not a
test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from motion_core.config import SampleConfig  # noqa: E402
from motion_core.models import DEFAULT_MODEL_DIR, load_model  # noqa: E402
from shapes_world import card, evaluate  # noqa: E402
from shapes_world.examples import model_world  # noqa: E402

FIRST_WORLD_STEPS = 25  # what the first world's card sampled with


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--n", type=int, default=40, help="prompts per guidance scale")
    ap.add_argument("--guidance", default="3,5,7.5,12", help="comma-separated guidance scales")
    ap.add_argument("--rescale", default=None,
                    help="comma-separated guidance rescales, paths world (default: the model's own)")
    ap.add_argument("--seed", type=int, default=30_000, help="first prompt's seed (the card uses 20000)")
    ap.add_argument("--steps", type=int, default=None,
                    help="DDIM sampling steps (default: the model's own; 25 for first-world models)")
    args = ap.parse_args(argv)
    if args.seed < card.CARD_SEED + 40 and card.CARD_SEED < args.seed + args.n:
        ap.error(f"--seed {args.seed} --n {args.n} draws the card's own prompts (seeds {card.CARD_SEED} to "
                 f"{card.CARD_SEED + 39}); choose settings on other seeds")
    try:
        rescales = [None] if args.rescale is None else [float(x) for x in args.rescale.split(",")]
        steps = FIRST_WORLD_STEPS if args.steps is None else args.steps
        for phi in rescales:  # the one range check, for the rescale and the steps
            SampleConfig(guidance_rescale=phi or 0.0, num_inference_steps=steps).validate()
    except ValueError as e:  # a number that is not one, or out of range (ConfigError)
        ap.error(f"--rescale {args.rescale!r} --steps {args.steps}: {e}")
    model = load_model(args.model, device="cpu")
    paths_world = model_world(Path(args.model)) == "paths"
    if args.rescale is not None and not paths_world:
        ap.error("--rescale: paths-world models only")
    own = SampleConfig.for_model(model)
    if paths_world and args.steps is None:
        steps = own.num_inference_steps
    for g in (float(x) for x in args.guidance.split(",")):
        for phi in rescales:
            t = time.perf_counter()
            if paths_world:
                res = card.prompt_following(model, args.n, seed=args.seed, guidance=g, rescale=phi, steps=steps)
            else:
                res = evaluate.prompt_following(model, args.n, steps, g, seed=args.seed)
            rows = res.pop("rows")
            if paths_world:  # [drawn right, asked] per prompted shape: which shapes the misses are
                res["by_shape"] = card.shape_counts(rows)
            used = phi if phi is not None else own.guidance_rescale
            print(json.dumps({"guidance": g, "rescale": used, "steps": steps, "seed": args.seed, **res,
                              "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
