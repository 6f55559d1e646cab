"""The ``lora-jax`` command line: it parses flags and calls library functions, nothing more.

    lora-jax train    one method on one GLUE task
    lora-jax eval     a saved adapter on a task's dev set (or any GLUE-format TSV)
    lora-jax compare  several methods on one task, then a table, JSON, Markdown and a chart
    lora-jax merge    fold an adapter into its base and write a Hugging Face model directory
    lora-jax info     parameter and byte counts for a model and method, without training
    lora-jax export-peft  a LoRA adapter as a Hugging Face PEFT directory
    lora-jax import-peft  a PEFT LoRA directory as a lora_jax adapter file
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_jax.checkpoint import CheckpointFileError
from lora_jax.compare import compare, markdown_table
from lora_jax.data import (
    TASKS,
    Batcher,
    GlueDataError,
    choose_buckets,
    encode,
    get_task,
    load_split,
    read_tsv,
)
from lora_jax.lora import LoRAConfig, merge
from lora_jax.models import COMPUTE_DTYPES, LORA_TARGETS, TARGET_PRESETS, ModelConfig
from lora_jax.optim import METHODS
from lora_jax.parallel import parse_mesh
from lora_jax.peft import export_peft, import_peft, save_imported
from lora_jax.pretrained import (
    DEFAULT_MODEL,
    CheckpointError,
    load_config,
    load_tokenizer,
    save_pretrained,
)
from lora_jax.report import parameter_report
from lora_jax.train import TrainConfig, evaluate, fit, restore

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


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def task_name(text: str) -> str:
    try:
        return get_task(text).name
    except GlueDataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint: 'minilm' (all-MiniLM-L6-v2, offline; default) or a Hugging "
                        "Face BERT/RoBERTa model directory")


def add_lora_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha; scale = alpha/r "
                   "(default 16)")
    p.add_argument("--targets", type=parse_targets, default=TARGET_PRESETS["qv"],
                   help="layers to adapt: qv, attention, all, or e.g. query,value (default qv)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA path")
    p.add_argument("--adapter-size", type=positive_int, default=64,
                   help="bottleneck size of the Houlsby adapters (method adapter; default 64)")


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", type=task_name, default="sst2",
                   help=f"GLUE task: {', '.join(TASKS)} (default sst2)")
    add_model_flags(p)
    add_lora_flags(p)
    p.add_argument("--data-dir", help="GLUE directory (<dir>/<TASK>/{train,dev}.tsv); default: "
                   "$LORA_JAX_GLUE_DIR, else the official archives, downloaded once")
    p.add_argument("--source", choices=("tsv", "tfds"), default="tsv",
                   help="read TSV files (default) or tensorflow-datasets")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs (default 3)")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many steps")
    p.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    p.add_argument("--lr", type=float, help="peak learning rate (default: per method, "
                   "full 5e-5, lora 1e-3, bitfit 2e-3, head 2e-3, adapter 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay (default 0.01)")
    p.add_argument("--max-grad-norm", type=float, help="clip the gradient's global norm")
    p.add_argument("--max-length", type=positive_int, default=128,
                   help="truncate examples to this many tokens (default 128)")
    p.add_argument("--train-limit", type=positive_int,
                   help="train on a seeded subsample of this many examples")
    p.add_argument("--eval-limit", type=positive_int, help="evaluate on a subsample")
    p.add_argument("--seed", type=int, default=0, help="seed for data order, init, dropout")
    p.add_argument("--save-every", type=positive_int,
                   help="also save a resumable state every N steps (always after each epoch)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dtype", choices=tuple(COMPUTE_DTYPES), default="float32",
                   help="compute dtype; bfloat16 keeps params and optimizer state in float32 "
                        "(for GPU/TPU; not faster on small CPUs)")
    p.add_argument("--mesh", type=mesh_spec, default=None,
                   help="device mesh 'data=N[,model=M]': batch split over data, frozen weights "
                        "over model (default: every local device on data)")


def mesh_spec(text: str) -> str:
    try:
        parse_mesh(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def train_config(args: argparse.Namespace, method: str) -> TrainConfig:
    return TrainConfig(
        task=args.task, method=method, model=args.model, rank=args.rank, alpha=args.alpha,
        targets=args.targets, lora_dropout=args.lora_dropout, adapter_size=args.adapter_size,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.lr, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        max_length=args.max_length, train_limit=args.train_limit, eval_limit=args.eval_limit,
        seed=args.seed, source=args.source, save_every=args.save_every, dtype=args.dtype)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one method on one GLUE task")
    p.add_argument("--method", choices=METHODS, default="lora", help="what trains (default lora)")
    add_train_flags(p)
    p.add_argument("--out", default=None, help="run directory (default runs/<task>-<method>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/state.safetensors")

    p = sub.add_parser("compare", help="several methods on one task, then a table")
    p.add_argument("--methods", default="full,lora",
                   help=f"comma-separated, from {', '.join(METHODS)} (default full,lora)")
    add_train_flags(p)
    p.add_argument("--out", default=None, help="output directory (default runs/compare-<task>)")

    p = sub.add_parser("eval", help="evaluate a saved adapter")
    p.add_argument("adapter", help="an adapter.safetensors written by train/compare")
    p.add_argument("--model", help="base model (default: the one the adapter names)")
    p.add_argument("--task", type=task_name, help="task (default: the adapter's)")
    p.add_argument("--data-dir", help="GLUE directory (default $LORA_JAX_GLUE_DIR or download)")
    p.add_argument("--file", help="evaluate on this GLUE-format TSV instead of the dev set")
    p.add_argument("--batch-size", type=positive_int, default=64)

    p = sub.add_parser("merge", help="fold an adapter into its base; write an HF model dir")
    p.add_argument("adapter", help="an adapter.safetensors written by train/compare")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", help="base model (default: the one the adapter names)")

    p = sub.add_parser("export-peft", help="write a LoRA adapter as a Hugging Face PEFT dir")
    p.add_argument("adapter", help="a LoRA adapter.safetensors written by train/compare")
    p.add_argument("--out", required=True, help="output directory (adapter_config.json + "
                   "adapter_model.safetensors)")

    p = sub.add_parser("import-peft", help="read a PEFT LoRA dir into a lora_jax adapter file")
    p.add_argument("peft_dir", help="a PEFT LoRA directory (task_type SEQ_CLS)")
    p.add_argument("--out", required=True, help="the adapter file to write (.safetensors)")
    p.add_argument("--model", help="base model (default: the dir's base_model_name_or_path)")
    p.add_argument("--task", type=task_name, help="GLUE task the head is for (else give "
                   "--task to eval)")

    p = sub.add_parser("info", help="parameter and byte counts for a model and method")
    p.add_argument("--method", choices=METHODS, default="lora", help="what trains (default lora)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint: 'minilm' (all-MiniLM-L6-v2, offline), a Hugging Face "
                        f"model directory, or a shape without weights: {', '.join(SHAPES)}")
    add_lora_flags(p)
    p.add_argument("--num-labels", type=positive_int, default=2, help="outputs of the head")
    return parser


def cmd_train(args) -> int:
    cfg = train_config(args, args.method)
    out = Path(args.out or f"runs/{cfg.task}-{cfg.method}")
    result = fit(cfg, out, data_dir=args.data_dir, resume=args.resume, progress=not args.quiet,
                 mesh=args.mesh)
    print(json.dumps({"run_dir": str(out), "best": result.best, "final": result.final}))
    return 0


def cmd_compare(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"--methods: unknown {bad or [args.methods]}; choose from {METHODS}")
    base = train_config(args, methods[0])
    out = Path(args.out or f"runs/compare-{base.task}")
    report = compare(base, methods, out, data_dir=args.data_dir, progress=not args.quiet,
                     mesh=args.mesh)
    print(markdown_table(report))
    print(f"wrote {out}/compare.json, compare.md, compare.png")
    return 0


def cmd_eval(args) -> int:
    model, variables, meta, pre = restore(args.adapter, model=args.model)
    if not (args.task or meta["task"]):
        raise ValueError(f"{args.adapter} names no task (imported without --task); give --task")
    task = get_task(args.task or meta["task"])
    cfg = meta.get("train_config", {})
    tok = load_tokenizer(pre.path, max_length=cfg.get("max_length", 128))
    examples = (read_tsv(args.file, task) if args.file
                else load_split(task, "dev", data_dir=args.data_dir))
    enc = encode(tok, examples)
    batches = Batcher(enc, args.batch_size, choose_buckets(enc.lengths, tok.max_length),
                      shuffle=False)
    scores = evaluate(model.apply, variables, batches, task)
    print(json.dumps({"task": task.name, "examples": len(enc), "source": examples.source,
                      **scores}))
    return 0


def cmd_merge(args) -> int:
    _, variables, meta, pre = restore(args.adapter, model=args.model)
    method = meta["method"]
    if method == "adapter":
        raise ValueError("Houlsby adapters add layers; they cannot be folded into the base "
                         "weights (that is LoRA's advantage). Merge works for lora, bitfit, "
                         "head and full")
    if method == "lora":
        variables = merge(variables, TrainConfig.from_json(meta["train_config"]).lora_config())
    cfg = pre.config
    out = save_pretrained(variables["params"], cfg, args.out, tokenizer_from=pre.path)
    print(json.dumps({"out": str(out), "method": method, "task": meta["task"]}))
    return 0


def cmd_export_peft(args) -> int:
    out = export_peft(args.adapter, args.out)
    print(json.dumps({"out": str(out), "files": sorted(f.name for f in out.iterdir())}))
    return 0


def cmd_import_peft(args) -> int:
    imported = import_peft(args.peft_dir, base=args.model)
    out = save_imported(imported, args.out, task=args.task)
    print(json.dumps({"out": str(out), "base": imported.base, "rank": imported.lora.rank,
                      "alpha": imported.lora.alpha, "targets": list(imported.lora.targets),
                      "task": args.task}))
    return 0


def cmd_info(args) -> int:
    cfg = model_config(args.model, args.num_labels)
    lora = LoRAConfig(rank=args.rank, alpha=args.alpha, targets=args.targets)
    report = parameter_report(cfg, args.method, lora if args.method == "lora" else None,
                              adapter_size=args.adapter_size)
    print(json.dumps(report, indent=2))
    return 0


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "eval": cmd_eval, "merge": cmd_merge,
            "info": cmd_info, "export-peft": cmd_export_peft, "import-peft": cmd_import_peft}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, GlueDataError, CheckpointError,
            CheckpointFileError) as e:
        print(f"lora-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lora-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
