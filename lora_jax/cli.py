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
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_jax.adapters import adapter_task, restore
from lora_jax.checkpoint import CheckpointFileError, read_adapter
from lora_jax.compare import compare, markdown_table
from lora_jax.config import TrainConfig
from lora_jax.data import (
    SOURCES,
    TASKS,
    Batcher,
    GlueDataError,
    choose_buckets,
    encode,
    get_task,
    load_split,
    read_tsv,
)
from lora_jax.export import export_merged, hf_labels
from lora_jax.files import RunDirError, check_output_file
from lora_jax.lora import INIT_SCHEMES, LORA, LoRAConfig
from lora_jax.methods import REGISTRY, get_method, method_names
from lora_jax.model_dir import DEFAULT_MODEL, CheckpointError
from lora_jax.models import COMPUTE_DTYPES, LORA_TARGETS, TARGET_PRESETS, ModelConfig, check_rank
from lora_jax.parallel import parse_mesh
from lora_jax.peft import export_peft, import_peft, read_peft_config, save_imported
from lora_jax.peft_gpt2 import MODEL as GPT2_MODEL
from lora_jax.peft_gpt2 import TASK_TYPE as GPT2_TASK
from lora_jax.peft_gpt2 import export_peft_gpt2, import_peft_gpt2, save_gpt2_adapter
from lora_jax.pretrained import load_config
from lora_jax.quant import FORMATS
from lora_jax.report import parameter_report
from lora_jax.run import LOG_EVERY, TrainingDiverged, TrainingInterrupted, fit
from lora_jax.tokenizer import load_tokenizer
from lora_jax.train import evaluate
from lora_jax.validate import ConfigError, integer, real

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


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _flag(parse: Callable[[str], Any], check: Callable[..., Any], **limits: Any
          ) -> Callable[[str], Any]:
    """A flag's type: parse the text, then the same check the config runs on that field
    (``lora_jax.validate``), so a flag and its config field cannot disagree on what is valid."""
    def typed(text: str) -> Any:
        try:
            return check("", "", parse(text), **limits)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return typed


positive_int = _flag(_int, integer, minimum=1)
length = _flag(_int, integer, minimum=4)  # [CLS] a token [SEP]; the model's positions cap it later
seed = _flag(_int, integer, minimum=0)
positive_float = _flag(_float, real, low=0, low_open=True)
nonnegative_float = _flag(_float, real, low=0)
probability = _flag(_float, real, low=0, high=1)


def task_name(text: str) -> str:
    try:
        return get_task(text).name
    except GlueDataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint: 'minilm' (all-MiniLM-L6-v2, offline; default) or a Hugging "
                        "Face BERT/RoBERTa model directory")


def add_quantize_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--quantize", choices=FORMATS, default=None,
                   help=f"QLoRA: {what} (nf4: 4.5 bits per weight, nf4-dq: 4.1 with the scales "
                        "double-quantized, int8: 8; embeddings, biases and LayerNorms stay float)")


def add_lora_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rank", type=positive_int, default=8, help="LoRA rank r (default 8; at "
                   "most the smallest targeted layer's width)")
    p.add_argument("--alpha", type=positive_float, default=16.0, help="LoRA alpha; scale = "
                   "alpha/r (default 16)")
    p.add_argument("--rslora", action="store_true", help="rank-stabilised LoRA: scale = "
                   "alpha/sqrt(r) instead of alpha/r (Kalajdzievski 2023)")
    p.add_argument("--targets", type=parse_targets, default=TARGET_PRESETS["qv"],
                   help="layers to adapt: qv, attention, all (the six in each block), or names "
                        f"from {', '.join(LORA_TARGETS)}, e.g. query,value (default qv)")
    p.add_argument("--lora-dropout", type=probability, default=0.0,
                   help="dropout on the LoRA path, in [0, 1)")
    p.add_argument("--init", choices=INIT_SCHEMES, default="kaiming",
                   help="how A and B start: kaiming or gaussian A with B = 0 (default kaiming), "
                        "or pissa: both from the weights' top-r singular vectors, the residual "
                        "frozen; its adapter file is a plain LoRA of rank 2r (Meng et al. 2024)")
    p.add_argument("--adapter-size", type=positive_int, default=64,
                   help="bottleneck size of the Houlsby adapters (method adapter; default 64)")


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", type=task_name, default="sst2",
                   help=f"GLUE task: {', '.join(TASKS)} (default sst2)")
    add_model_flags(p)
    add_lora_flags(p)
    add_quantize_flag(p, "store the frozen base's dense kernels in this format and dequantize "
                         "them in the forward pass")
    p.add_argument("--loraplus-ratio", type=positive_float, default=None,
                   help="LoRA+: every B learns at this multiple of the learning rate (the paper "
                        "suggests 16; Hayou et al. 2024); LoRA and DoRA only")
    p.add_argument("--data-dir", help="GLUE directory (<dir>/<TASK>/{train,dev}.tsv); default: "
                   "$LORA_JAX_GLUE_DIR, else the official archives, downloaded once")
    p.add_argument("--source", choices=SOURCES, default="tsv",
                   help="read TSV files (default) or tensorflow-datasets")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs (default 3)")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many steps")
    p.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    defaults = ", ".join(f"{m.name} {m.default_lr:g}" for m in REGISTRY.values())
    p.add_argument("--lr", type=positive_float,
                   help=f"peak learning rate (default: per method, {defaults})")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.01,
                   help="AdamW decay (default 0.01)")
    p.add_argument("--max-grad-norm", type=positive_float,
                   help="clip the gradient's global norm (trainable leaves) to this")
    p.add_argument("--max-length", type=length, default=128,
                   help="truncate examples to this many tokens (default 128)")
    p.add_argument("--train-limit", type=positive_int,
                   help="train on a seeded subsample of this many examples")
    p.add_argument("--eval-limit", type=positive_int, help="evaluate on a subsample")
    p.add_argument("--seed", type=seed, default=0, help="seed for data order, init, dropout")
    p.add_argument("--save-every", type=positive_int,
                   help="also save a resumable state every N steps (always after each epoch)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log-every", type=positive_int, default=LOG_EVERY,
                   help="steps between reads of the loss back from the device (the loop never "
                        f"waits for it in between; default {LOG_EVERY})")
    p.add_argument("--dtype", choices=tuple(COMPUTE_DTYPES), default="float32",
                   help="compute dtype; bfloat16 keeps params and optimizer state in float32 "
                        "(for GPU/TPU; not faster on small CPUs)")
    p.add_argument("--mesh", type=mesh_spec, default=None,
                   help="device mesh 'data=N[,model=M]': batch split over data, frozen weights "
                        "over model (default: every local device on data)")


def mesh_spec(text: str) -> str:
    try:
        parse_mesh(text)
    except ValueError as e:  # argparse already names the flag
        raise argparse.ArgumentTypeError(str(e).removeprefix("--mesh: ")) from None
    return text


def train_config(args: argparse.Namespace, method: str) -> TrainConfig:
    return TrainConfig(
        task=args.task, method=method, model=args.model, rank=args.rank, alpha=args.alpha,
        targets=args.targets, lora_dropout=args.lora_dropout, rslora=args.rslora,
        lora_init=args.init, loraplus_ratio=args.loraplus_ratio, adapter_size=args.adapter_size,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.lr, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        max_length=args.max_length, train_limit=args.train_limit, eval_limit=args.eval_limit,
        seed=args.seed, source=args.source, save_every=args.save_every, dtype=args.dtype,
        quantize=args.quantize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one method on one GLUE task")
    p.add_argument("--method", choices=method_names(), default="lora",
                   help="what trains (default lora)")
    add_train_flags(p)
    p.add_argument("--out", default=None, help="run directory (default runs/<task>-<method>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/state.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out "
                   "(its files go once the new run has passed its checks)")

    p = sub.add_parser("compare", help="several methods on one task, then a table")
    p.add_argument("--methods", default="full,lora",
                   help=f"comma-separated, from {', '.join(method_names())} (default full,lora)")
    add_train_flags(p)
    p.add_argument("--out", default=None, help="output directory (default runs/compare-<task>)")
    p.add_argument("--overwrite", action="store_true", help="replace a comparison already in "
                   "--out (one that compare wrote)")

    p = sub.add_parser("eval", help="evaluate a saved adapter")
    p.add_argument("adapter", help="an adapter.safetensors written by train/compare")
    p.add_argument("--model", help="base model (default: the one the adapter names)")
    p.add_argument("--task", type=task_name, help="task (default: the adapter's)")
    p.add_argument("--data-dir", help="GLUE directory (default $LORA_JAX_GLUE_DIR or download)")
    p.add_argument("--file", help="evaluate on this GLUE-format TSV instead of the dev set")
    p.add_argument("--cross-task", action="store_true", help="allow --task to name another "
                   "task than the adapter's (same number of outputs); the line says so")
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_quantize_flag(p, "check that the adapter was trained on a base in this format (the "
                         "base is loaded as the adapter records, by default)")

    p = sub.add_parser("merge", help="fold an adapter into its base; write an HF model dir")
    p.add_argument("adapter", help="an adapter.safetensors written by train/compare")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--model", help="base model (default: the one the adapter names)")
    p.add_argument("--overwrite", action="store_true", help="replace a model directory that "
                   "merge wrote before")
    add_quantize_flag(p, "refused: a merged model is written in float (an adapter trained on a "
                         "quantized base is folded into the dequantized kernels)")

    p = sub.add_parser("export-peft", help="write a LoRA adapter as a Hugging Face PEFT dir")
    p.add_argument("adapter", help="a LoRA adapter.safetensors written by train/compare (or a "
                   "GPT-2 adapter: save_gpt2_adapter)")
    p.add_argument("--out", required=True, help="output directory (adapter_config.json + "
                   "adapter_model.safetensors), new or empty")
    p.add_argument("--overwrite", action="store_true", help="replace a PEFT directory that "
                   "export-peft wrote before")

    p = sub.add_parser("import-peft", help="read a PEFT LoRA dir into a lora_jax adapter file")
    p.add_argument("peft_dir", help="a PEFT LoRA directory (task_type SEQ_CLS, or CAUSAL_LM "
                   "for GPT-2 with --model a GPT-2 directory)")
    p.add_argument("--out", required=True, help="the adapter file to write (.safetensors)")
    p.add_argument("--model", help="base model (default: the dir's base_model_name_or_path)")
    p.add_argument("--task", type=task_name, help="GLUE task the head is for (else give "
                   "--task to eval)")
    p.add_argument("--overwrite", action="store_true", help="replace the --out file")

    p = sub.add_parser("info", help="parameter and byte counts for a model and method")
    p.add_argument("--method", choices=method_names(), default="lora",
                   help="what trains (default lora)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint: 'minilm' (all-MiniLM-L6-v2, offline), a Hugging Face "
                        f"model directory, or a shape without weights: {', '.join(SHAPES)}")
    add_lora_flags(p)
    add_quantize_flag(p, "count the frozen base's bytes with its dense kernels in this format")
    p.add_argument("--num-labels", type=positive_int, default=2, help="outputs of the head")
    return parser


def cmd_train(args) -> int:
    cfg = train_config(args, args.method)
    out = Path(args.out or f"runs/{cfg.task}-{cfg.method}")
    result = fit(cfg, out, data_dir=args.data_dir, resume=args.resume, overwrite=args.overwrite,
                 progress=not args.quiet, mesh=args.mesh, log_every=args.log_every)
    print(json.dumps({"run_dir": str(out), "best": result.best, "final": result.final}))
    return 0


def cmd_compare(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in method_names()]
    if bad or not methods:
        raise ValueError(f"--methods: unknown {bad or [args.methods]}; "
                         f"choose from {method_names()}")
    base = train_config(args, methods[0])
    out = Path(args.out or f"runs/compare-{base.task}")
    report = compare(base, methods, out, data_dir=args.data_dir, progress=not args.quiet,
                     mesh=args.mesh, overwrite=args.overwrite, log_every=args.log_every)
    print(markdown_table(report))
    print(f"wrote {out}/compare.json, compare.md, compare.png")
    return 0


def cmd_eval(args) -> int:
    loaded = read_adapter(args.adapter)  # the task check needs no model: fail before loading
    task = adapter_task(args.adapter, loaded[1], args.task, cross_task=args.cross_task)
    kw = {} if args.quantize is None else {"quantize": args.quantize}
    model, variables, meta, pre = restore(args.adapter, model=args.model, loaded=loaded, **kw)
    cfg = meta.get("train_config") or {}
    tok = load_tokenizer(pre.path, max_length=min(cfg.get("max_length", 128),
                                                  pre.config.max_positions))
    examples = (read_tsv(args.file, task) if args.file
                else load_split(task, "dev", data_dir=args.data_dir))
    enc = encode(tok, examples)
    batches = Batcher(enc, args.batch_size, choose_buckets(enc.lengths, tok.max_length),
                      shuffle=False)
    scores = evaluate(model.apply, variables, batches, task)
    line = {"task": task.name, "adapter_task": meta["task"], "examples": len(enc),
            "source": examples.source, **scores}
    if meta["task"] and meta["task"] != task.name:
        line["cross_task"] = (f"a {meta['task']} adapter scored on {task.name} data: its outputs "
                              f"mean {meta['task']}'s classes")
    print(json.dumps(line))
    return 0


def cmd_merge(args) -> int:
    if args.quantize is not None:
        raise ValueError(f"--quantize {args.quantize}: merging into a quantized model is "
                         "refused: W + (alpha/r) A B re-quantized to a block's few levels "
                         "rounds the update (about 1e-3 of W) away; merge writes float weights")
    loaded = read_adapter(args.adapter)
    meta = loaded[1]
    out = export_merged(args.adapter, args.out, model=args.model, overwrite=args.overwrite,
                        loaded=loaded)
    quantized = (meta.get("train_config") or {}).get("quantize")
    note = ({"note": f"trained on a {quantized} base: written as float weights (the dequantized "
                     "base plus the update)"} if quantized else {})
    print(json.dumps({"out": str(out), "method": meta["method"], "task": meta["task"],
                      "labels": hf_labels(meta), **note}))
    return 0


def cmd_export_peft(args) -> int:
    gpt2 = read_adapter(args.adapter)[1].get("model") == GPT2_MODEL
    export = export_peft_gpt2 if gpt2 else export_peft
    out = export(args.adapter, args.out, overwrite=args.overwrite)
    print(json.dumps({"out": str(out), "files": sorted(f.name for f in out.iterdir())}))
    return 0


def cmd_import_peft(args) -> int:
    reads = {"the PEFT adapter": Path(args.peft_dir)}  # (the base is checked once it is known)
    check_output_file(args.out, overwrite=args.overwrite, reads=reads)  # before any loading
    peft_config = read_peft_config(Path(args.peft_dir))[0]
    if peft_config.get("task_type") == GPT2_TASK:
        return _import_peft_gpt2(args, peft_config)
    imported = import_peft(args.peft_dir, base=args.model)
    out = save_imported(imported, args.out, task=args.task, overwrite=args.overwrite)
    print(json.dumps({"out": str(out), "base": imported.base, "rank": imported.lora.rank,
                      "alpha": imported.lora.alpha, "rslora": imported.lora.rslora,
                      "targets": list(imported.lora.targets), "task": args.task}))
    return 0


def _import_peft_gpt2(args, peft_config: dict) -> int:
    """import-peft for a GPT-2 language-model adapter (task_type CAUSAL_LM): onto the GPT-2
    directory ``--model`` (or the config's base_model_name_or_path)."""
    base = args.model or peft_config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{args.peft_dir}: names no base_model_name_or_path; give --model")
    if args.task is not None:
        raise ValueError("--task is for classification adapters; a GPT-2 adapter has no task")
    lora, variables, pre = import_peft_gpt2(args.peft_dir, base)
    out = save_gpt2_adapter(args.out, variables, lora, pre, overwrite=args.overwrite)
    print(json.dumps({"out": str(out), "base": str(base), "rank": lora.rank,
                      "alpha": lora.alpha, "rslora": lora.rslora,
                      "targets": list(lora.targets), "task": None}))
    return 0


def cmd_info(args) -> int:
    cfg = model_config(args.model, args.num_labels).replace(quantize=args.quantize)
    method = get_method(args.method)
    lora = LoRAConfig(rank=args.rank, alpha=args.alpha, targets=args.targets, rslora=args.rslora,
                      init=args.init, **dict(method.lora_options))
    lora = lora if method.creates == LORA else None
    check_rank(lora, cfg, args.model)
    report = parameter_report(cfg, args.method, lora, adapter_size=args.adapter_size)
    print(json.dumps(report, indent=2))
    return 0


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "eval": cmd_eval, "merge": cmd_merge,
            "info": cmd_info, "export-peft": cmd_export_peft, "import-peft": cmd_import_peft}


def resume_command(argv: list[str], command: str, run_dir: Path) -> str:
    """The command line that continues an interrupted run: the same flags plus ``--resume``
    (for ``compare``: ``train`` on the method's run directory)."""
    if command == "train":
        return shlex.join(["lora-jax", *argv, *([] if "--resume" in argv else ["--resume"])])
    kept, skip = [], False
    for a in argv[1:]:  # drop compare's --methods and --out, with their values
        if skip:
            skip = False
        elif a in ("--methods", "--out"):
            skip = True
        elif not a.startswith(("--methods=", "--out=")):
            kept.append(a)
    return shlex.join(["lora-jax", "train", "--method", run_dir.name, "--out", str(run_dir),
                       *kept, "--resume"])


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done; 2 bad flags or input files (argparse's code too),
    with a message naming the flag or file; 1 training diverged or an I/O error mid-run;
    130 / 143 interrupted by SIGINT / SIGTERM, with the state saved and a resume command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    name = f"lora-jax {args.command}"
    try:
        return COMMANDS[args.command](args)
    except TrainingInterrupted as e:
        hint = resume_command(argv, args.command, e.state_file.parent)
        print(f"{name}: {e}; resume with: {hint}", file=sys.stderr)
        return e.exit_code
    except TrainingDiverged as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, GlueDataError, CheckpointError,
            CheckpointFileError, RunDirError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk that fills up mid-run, a file that vanished: no traceback
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
