"""The model card's base-model rows alone, for a paths-world model in training: VAE PSNR and prompt following.

    python benchmarks/base_rows.py --model checkpoints/shapes-f2

The same code and seeds as the card (``shapes_world.card.vae_psnr`` on 40 held-out clips,
``shapes_world.card.prompt_following`` on the card's 40 prompts with the model's own sampling defaults), without
the ladder's LoRAs: about two minutes on one core, so a checkpoint can be checked against the shipped model's card
before the card's whole ladder (hours) is run on it. Prints one JSON line. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from motion_core.models import load_model  # noqa: E402
from shapes_world import card  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    pf = card.prompt_following(model)
    print(json.dumps({"model": model.source, "vae_psnr": round(card.vae_psnr(model), 2),
                      **{k: v for k, v in pf.items() if k != "rows"}, "by_shape": card.shape_counts(pf["rows"])}))


if __name__ == "__main__":
    main()
