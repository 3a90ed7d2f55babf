"""``python -m vitviz serve --model M``: serve a model over HTTP (Ray Serve) until interrupted.

The model name, weights file, typed labels and limits are checked before Ray starts, so a
mistake costs seconds, not a cluster start-up.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from vitviz.cli.arguments import add_device, add_labels, add_model, add_precision, add_weights
from vitviz.cli.common import EXIT_OK, typed_labels
from vitviz.errors import OptionsError, ServerError, VitvizError

NAME = "serve"
HELP = "serve a model over HTTP (Ray Serve; see README)"
ORDER = 70  # its place in --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model the server loads, where it listens, and its limits."""
    add_model(parser, default="vit-b16", help="curated key or any timm ViT name")
    add_weights(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8000)
    add_device(parser, help="auto, cpu, cuda")
    add_precision(parser)
    add_labels(parser)
    parser.add_argument("--replicas", help="replicas: a number, or auto (default: one per GPU)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument(
        "--queue-limit", type=int, default=64, help="requests per replica, then 503"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request, then 504")
    parser.add_argument("--max-upload-mb", type=float, default=20.0)
    parser.add_argument(
        "--upload-timeout", type=float, default=15.0, help="seconds to send a body, then 408"
    )
    parser.add_argument("--max-uploads", type=int, default=128, help="bodies received at once")
    parser.add_argument(
        "--max-answer-mb", type=float, default=256.0, help="largest answer, else 400"
    )
    parser.add_argument(
        "--address", help="join a running Ray cluster (e.g. auto) instead of a new one"
    )


def check_before_ray(args: argparse.Namespace) -> None:
    """Model name, weights file and limits, checked in seconds before Ray starts."""
    from vitviz.models import read_state_dict
    from vitviz.models.families import lookup

    for name in ("max_batch_size", "queue_limit", "max_uploads"):
        if getattr(args, name) < 1:
            raise OptionsError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("timeout", "upload_timeout", "max_upload_mb", "max_answer_mb"):
        if not getattr(args, name) > 0:
            raise OptionsError(f"--{name.replace('_', '-')} must be positive")
    family, ref = lookup(args.model)
    family.check(ref)  # unknown names, refused architectures and towers, before Ray
    args.labels, args.template = typed_labels(args, args.model)  # checked, before Ray
    if args.weights:
        read_state_dict(args.weights)  # unreadable, unsafe or empty files fail here


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The server's settings from the command line (:func:`vitviz.server.serve.run_server`)."""
    settings: dict[str, Any] = {
        "model": args.model,
        "weights": args.weights,
        "random_weights": args.random_weights,
        "device": args.device,
        "precision": args.precision,
        "labels": args.labels,
        "template": args.template,
        "max_batch_size": args.max_batch_size,
        "batch_wait_s": args.batch_wait_ms / 1000,
        "queue_limit": args.queue_limit,
        "timeout_s": args.timeout,
        "max_upload_bytes": int(args.max_upload_mb * 2**20),
        "upload_timeout_s": args.upload_timeout,
        "max_uploads": args.max_uploads,
        "max_answer_bytes": int(args.max_answer_mb * 2**20),
        # a token here means every replica must have one (joined nodes read their own env)
        "require_token": bool(os.environ.get("VITVIZ_TOKEN")),
    }
    if args.replicas is not None:
        settings["replicas"] = args.replicas if args.replicas == "auto" else int(args.replicas)
    return settings


def run(args: argparse.Namespace) -> int:
    """Run the HTTP server until interrupted."""
    try:
        from vitviz.server.serve import run_server
        from vitviz.server.service import LOOPBACK_HOSTS
    except ImportError as err:
        raise OptionsError(
            f"serving needs Ray Serve ({err.name} is missing): "
            "pip install -r requirements-serve.txt"
        ) from None
    check_before_ray(args)
    if args.host not in LOOPBACK_HOSTS and not os.environ.get("VITVIZ_TOKEN"):
        print(
            f"warning: serving on {args.host} without VITVIZ_TOKEN: anyone who can reach this "
            "port can use the server",
            file=sys.stderr,
        )
    settings = settings_of(args)
    try:
        run_server(settings, host=args.host, port=args.port, address=args.address)
    except (VitvizError, KeyboardInterrupt):
        raise
    except Exception as err:  # Ray's own start-up failures: one line, not a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ServerError(
            f"the server could not start ({type(err).__name__}: {first}); "
            "see the messages above, or the logs under /tmp/ray/session_latest/logs"
        ) from None
    return EXIT_OK
