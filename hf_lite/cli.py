"""The ``hf-lite`` command.

>>> main(["demo", "--output-dir", "hf-lite-demo"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import sys

from hf_lite import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-lite",
        description="Make Hugging Face Hub checkpoints lighter to fine-tune and to serve.",
    )
    parser.add_argument("--version", action="version", version=f"hf-lite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="run the pipeline offline on an embedded default (CPU, a few minutes)",
        description="Pretrain a small Llama-style model on a generated corpus, save it like a Hub checkpoint, "
        "load it 4-bit with a LoRA adapter (QLoRA) and fine-tune it; print measured perplexity, "
        "parameters and memory.",
    )
    demo.add_argument("--output-dir", default="hf-lite-demo", help="where models and reports go (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=300, help="pretraining optimizer steps (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and order (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        from hf_lite.demo import run_demo

        report = run_demo(args.output_dir, steps=args.steps, seed=args.seed)
        print()
        print(report.to_markdown())
        print(
            f"\nperplexity of the base on its own corpus: {report.perplexity_pretrained:.2f}; "
            f"finished in {report.seconds:.0f} s. Report: {args.output_dir}/report.json, {args.output_dir}/report.md"
        )
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects unknown commands first


if __name__ == "__main__":
    sys.exit(main())
