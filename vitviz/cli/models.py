"""``python -m vitviz models``: the curated models and where their weights come from."""

from __future__ import annotations

import argparse

from vitviz.cli.common import EXIT_OK

NAME = "models"
HELP = "list the curated models and where their weights come from"
ORDER = 10  # its place in --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``models`` takes no arguments."""


def run(args: argparse.Namespace) -> int:
    """Print the curated models and where each one's weights would come from."""
    from vitviz.models import CURATED, weights_plan
    from vitviz.models.families import lookup

    for spec in CURATED.values():
        print(f"{spec.key:20s} {spec.title}")
        family, _ = lookup(spec.key)
        print(f"{'':20s}   {family.library}: {family.parse(spec.timm_name)}")
        print(f"{'':20s}   {spec.description}")
        print(f"{'':20s}   weights: {weights_plan(spec.key)}")
    print("Any other global-attention timm ViT name works too (e.g. vit_large_patch16_224).")
    print("So does hf:<hub id or folder>: a Hugging Face ViT, DeiT, BEiT or DINOv2 (transformers).")
    return EXIT_OK
