"""The ``lora-jax`` command line: parses flags and calls library functions, nothing more."""

from __future__ import annotations

import argparse
import json
import sys

from lora_jax.lora import LoRAConfig
from lora_jax.models import LORA_TARGETS, TARGET_PRESETS, ModelConfig
from lora_jax.optim import METHODS
from lora_jax.pretrained import DEFAULT_MODEL, load_config
from lora_jax.report import parameter_report

SHAPES = {  # model shapes by name, for counts without a checkpoint
    "roberta-base": ModelConfig.roberta_base,
    "tiny": ModelConfig.tiny,
}


def model_config(name: str, num_labels: int) -> ModelConfig:
    """A shape preset, or the config of a checkpoint (``minilm`` or a model directory)."""
    if name in SHAPES:
        return SHAPES[name](num_labels=num_labels)
    return load_config(name, num_labels=num_labels)


def parse_targets(text: str) -> tuple[str, ...]:
    """``qv`` / ``attention`` / ``all`` or a comma-separated list of layer names."""
    if text in TARGET_PRESETS:
        return TARGET_PRESETS[text]
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in names if t not in LORA_TARGETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown target(s) {bad or [text]}; use a preset {tuple(TARGET_PRESETS)} "
            f"or names from {LORA_TARGETS}"
        )
    return names


def add_lora_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default="lora", help="what trains (default lora)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha; scale = alpha/r")
    p.add_argument("--targets", type=parse_targets, default=TARGET_PRESETS["qv"],
                   help="layers to adapt: qv, attention, all, or e.g. query,value (default qv)")
    p.add_argument("--num-labels", type=int, default=2, help="outputs of the task head")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameter and byte counts for a model and method")
    info.add_argument("--model", default=DEFAULT_MODEL,
                      help="checkpoint: 'minilm' (all-MiniLM-L6-v2, offline), a Hugging Face "
                           f"model directory, or a shape without weights: {', '.join(SHAPES)}")
    add_lora_flags(info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            cfg = model_config(args.model, args.num_labels)
            lora = LoRAConfig(rank=args.rank, alpha=args.alpha, targets=args.targets)
            report = parameter_report(cfg, args.method, lora if args.method == "lora" else None)
            print(json.dumps(report, indent=2))
    except ValueError as e:
        print(f"lora-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
