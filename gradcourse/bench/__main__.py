"""Command line: ``python -m gradcourse.bench embedding [--vocab --dim
--tokens --device --dtype ...]`` and ``python -m gradcourse.bench monitor
[--vocab --d-model --layers --heads --length --batch --device ...]``;
``monitor --processes 2 [--parallel ddp fsdp]`` times the monitor inside
data-parallel training."""

from __future__ import annotations

import argparse
import sys

import torch

from gradcourse.bench import distributed_monitor, embedding, monitor
from gradcourse.embedding import METHODS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradcourse.bench")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser(
        "embedding", help="the embedding backward, every method vs PyTorch's own"
    )
    bench.add_argument(
        "--vocab", type=int, default=50257, help="rows of the embedding (default: GPT-2's 50257)"
    )
    bench.add_argument(
        "--dim", type=int, default=768, help="embedding width (default: GPT-2 small's 768)"
    )
    bench.add_argument(
        "--tokens", type=int, default=8 * 1024, help="tokens per step (default: 8 x 1024)"
    )
    bench.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    bench.add_argument("--dtype", default="float32", choices=tuple(embedding.DTYPES))
    bench.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    bench.add_argument("--rounds", type=int, default=10)
    watch = commands.add_parser(
        "monitor", help="training-step time with no monitor, a naive one, GradientMonitor"
    )
    watch.add_argument("--vocab", type=int, default=2000)
    watch.add_argument("--d-model", type=int, default=128)
    watch.add_argument("--layers", type=int, default=2)
    watch.add_argument("--heads", type=int, default=4)
    watch.add_argument("--length", type=int, default=128)
    watch.add_argument("--batch", type=int, default=8)
    watch.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    watch.add_argument("--rounds", type=int, default=300)
    watch.add_argument("--no-histograms", action="store_true", help="norms and update ratios only")
    watch.add_argument(
        "--forward-stats",
        action="store_true",
        help="one more variant: the monitor with forward_stats=True (Chapter 13)",
    )
    watch.add_argument(
        "--processes",
        type=int,
        default=1,
        help="2 or more: time a DDP and an FSDP2 step with and without "
        "the monitor in that many CPU processes (gloo); --batch is then per process",
    )
    watch.add_argument(
        "--parallel",
        nargs="+",
        default=list(distributed_monitor.MODES),
        choices=distributed_monitor.MODES,
        help="with --processes: which wrappers to time (default: both)",
    )
    args = parser.parse_args(argv)
    if args.command == "monitor":
        return _monitor(parser, args)
    for name in ("vocab", "dim", "tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    try:
        rows, distinct_ids = embedding.run(
            args.vocab,
            args.dim,
            args.tokens,
            args.device,
            args.dtype,
            tuple(args.methods),
            rounds=args.rounds,
        )
    except ValueError as error:
        parser.error(str(error))
    print(
        embedding.format_table(
            rows, args.vocab, args.dim, args.tokens, args.device, args.dtype, distinct_ids
        )
    )
    return 0


def _monitor(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    for name in ("vocab", "d_model", "layers", "heads", "length", "batch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.processes != 1:
        return _distributed_monitor(parser, args)
    try:
        rows = monitor.run(
            args.vocab,
            args.d_model,
            args.layers,
            args.heads,
            args.length,
            args.batch,
            args.device,
            args.rounds,
            histograms=not args.no_histograms,
            forward_stats=args.forward_stats,
        )
    except ValueError as error:
        parser.error(str(error))
    print(
        monitor.format_table(
            rows,
            f"TinyGPT vocab {args.vocab}, d_model {args.d_model}, {args.layers} layers, "
            f"{args.batch} x {args.length} tokens, AdamW, on "
            f"{args.device}",
        )
    )
    return 0


def _distributed_monitor(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        by_mode = distributed_monitor.run(
            args.processes,
            tuple(args.parallel),
            args.vocab,
            args.d_model,
            args.layers,
            args.heads,
            args.length,
            args.batch,
            rounds=args.rounds,
            histograms=not args.no_histograms,
        )
    except ValueError as error:
        parser.error(str(error))
    for mode, rows in by_mode.items():
        print(
            monitor.format_table(
                rows,
                f"{mode.upper()}, {args.processes} CPU processes (gloo), "
                f"TinyGPT d_model {args.d_model}, {args.layers} layers, "
                f"{args.batch} x {args.length} tokens per process, AdamW",
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
