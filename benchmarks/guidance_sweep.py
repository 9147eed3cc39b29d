"""Prompt following of a shapes-world model at several guidance scales, on prompts the model card does not use.

    python benchmarks/guidance_sweep.py --guidance 3,5,7.5,12                # embedded model, 40 prompts each
    python benchmarks/guidance_sweep.py --model runs/m --n 10 --guidance 7.5

Runs ``shapes_world.evaluate.prompt_following`` (base model, beta = 0, 25 DDIM steps) with seed 30000, so
the card's prompts (seed 20000) stay held out from any choice made here. Prints one JSON line per guidance scale:
colour, shape and background-colour accuracy and the coherent fraction. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from motion_core.models import DEFAULT_MODEL_DIR, load_model  # noqa: E402
from shapes_world.evaluate import prompt_following  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--n", type=int, default=40, help="prompts per guidance scale")
    ap.add_argument("--guidance", default="3,5,7.5,12", help="comma-separated guidance scales")
    ap.add_argument("--steps", type=int, default=25, help="DDIM sampling steps")
    args = ap.parse_args(argv)
    model = load_model(args.model, device="cpu")
    for g in (float(x) for x in args.guidance.split(",")):
        t = time.perf_counter()
        res = prompt_following(model, args.n, args.steps, g, seed=30_000)
        res.pop("rows")
        print(json.dumps({"guidance": g, **res, "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
