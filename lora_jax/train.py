"""One jitted train step for every method.

``train_step(state, batch) -> (state, metrics)`` is the same function for full fine-tuning,
LoRA, BitFit and head-only training: the method only changes the labels, hence the optimizer,
hence which leaves move. Gradients are taken with respect to all variables; the frozen ones are
multiplied by nothing (``set_to_zero``), so XLA removes their gradient matmuls from the
compiled step and a LoRA step costs about two forward passes instead of three.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm  # plain text bars: no ipywidgets needed in notebooks

from lora_jax.checkpoint import (
    CheckpointFileError,
    apply_adapter,
    load_state,
    read_adapter,
    save_adapter,
    save_state,
    state_nbytes,
)
from lora_jax.data import (
    SOURCES,
    Batcher,
    GlueDataError,
    Task,
    choose_buckets,
    encode,
    get_task,
    load_split,
    resolve_data_dir,
)
from lora_jax.files import (
    OutputExistsError,
    atomic_write,
    check_space,
    check_writable,
    is_stale_temp,
    remove_stale_temps,
)
from lora_jax.lora import LORA, LoRAConfig
from lora_jax.metrics import compute
from lora_jax.models import (
    ADAPTERS,
    COMPUTE_DTYPES,
    ModelConfig,
    SequenceClassifier,
    check_targets,
    start_head_at,
)
from lora_jax.optim import (
    FROZEN,
    METHODS,
    TRAINABLE,
    flatten,
    make_optimizer,
    split,
    trainable_labels,
    tree_bytes,
)
from lora_jax.parallel import make_mesh, shard_batch, shard_state, sharded_train_step
from lora_jax.pretrained import Pretrained, load_pretrained, load_tokenizer
from lora_jax.validate import ConfigError, boolean, choice, integer, names, real


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes, as one pytree.

    ``variables`` holds ``'params'`` (and ``'lora'`` when adapters exist); ``rng`` is the base
    key for dropout, folded with ``step`` so a resumed run draws the same masks.
    """

    step: jax.Array
    variables: dict
    opt_state: optax.OptState
    rng: jax.Array
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    method: str = flax.struct.field(pytree_node=False)


def create_train_state(
    apply_fn: Callable, variables: dict, method: str, tx: optax.GradientTransformation,
    rng: jax.Array,
) -> TrainState:
    """Start training ``variables`` with ``tx`` (from ``make_optimizer``) under ``method``.

    The state owns a copy of ``variables``: ``train_step`` donates its input buffers, and the
    caller's arrays (say, a loaded checkpoint shared by several runs) must stay valid.
    """
    trainable_labels(variables, method)  # fail early on a path no rule covers
    variables = jax.tree.map(jnp.array, variables)  # jnp.array copies
    return TrainState(step=jnp.zeros((), jnp.int32), variables=variables,
                      opt_state=tx.init(variables), rng=rng, apply_fn=apply_fn, tx=tx,
                      method=method)


def task_loss(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None
              ) -> tuple[jax.Array, dict]:
    """Cross-entropy for classification, mean squared error when there is one output.

    ``weight`` (1 for real rows, 0 for the rows that fill a bucket's last batch) makes padding
    rows count for nothing.
    """
    logits = logits.astype(jnp.float32)
    w = jnp.ones(logits.shape[0]) if weight is None else weight.astype(jnp.float32)
    total = jnp.maximum(w.sum(), 1.0)
    if logits.shape[-1] == 1:
        per_row = (logits[:, 0] - labels.astype(jnp.float32)) ** 2
        return jnp.sum(w * per_row) / total, {}
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(w * per_row) / total, {"accuracy": jnp.sum(w * correct) / total}


def forward(apply_fn: Callable, variables: dict, batch: dict, *, deterministic: bool = True,
            rng: jax.Array | None = None) -> jax.Array:
    """Logits for a batch dict with ``input_ids``, ``token_type_ids``, ``attention_mask``."""
    rngs = None if deterministic else {"dropout": rng}
    return apply_fn(variables, batch["input_ids"], batch["token_type_ids"],
                    batch["attention_mask"], deterministic=deterministic, rngs=rngs)


def _apply_trainable(variables: Any, updates: Any, labels: Any) -> Any:
    """``p + u`` on trainable leaves; frozen leaves are returned untouched (bit-identical)."""
    return jax.tree.map(lambda p, u, lab: p if lab == FROZEN else p + u.astype(p.dtype),
                        variables, updates, labels)


def _global_norm(tree: Any, labels: Any) -> jax.Array:
    """Norm over trainable leaves only (touching frozen gradients would keep them alive)."""
    pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(labels), strict=True)
    sq = [jnp.sum(jnp.square(g)) for g, lab in pairs if lab == TRAINABLE]
    return jnp.sqrt(sum(sq)) if sq else jnp.zeros(())


def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One optimizer step on one batch (not jitted: ``train_step`` is this function jitted, and
    ``lora_jax.parallel.sharded_train_step`` jits it with a mesh's in/out shardings)."""
    labels = trainable_labels(state.variables, state.method)  # static: depends on paths only
    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(variables):
        logits = forward(state.apply_fn, variables, batch, deterministic=False, rng=dropout_rng)
        return task_loss(logits, batch["label"], batch.get("weight"))

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.variables)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.variables)
    variables = _apply_trainable(state.variables, updates, labels)
    metrics = {"loss": loss, "grad_norm": _global_norm(grads, labels), **aux}
    return state.replace(step=state.step + 1, variables=variables, opt_state=opt_state), metrics


train_step = jax.jit(step_fn, donate_argnums=0)
train_step.__doc__ = ("One optimizer step on one batch, jitted; the state's buffers are donated "
                      "to the new state.")


@partial(jax.jit, static_argnums=0)
def predict(apply_fn: Callable, variables: dict, batch: dict) -> jax.Array:
    """Deterministic logits (no dropout) for a batch; compiled once per batch shape."""
    return forward(apply_fn, variables, batch)


# ---------------------------------------------------------------------------------------------
# The training loop: a GLUE task, one method, epochs, evaluation, checkpoints.

DEFAULT_LR = {"full": 5e-5, "lora": 1e-3, "bitfit": 2e-3, "head": 2e-3, "adapter": 1e-3}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved as ``config.json`` in the run directory.

    ``learning_rate=None`` takes the method's default (``DEFAULT_LR``). ``max_steps`` caps the
    number of steps (the schedule then spans ``max_steps``). ``train_limit`` subsamples the
    training set with ``seed``.
    """

    task: str = "sst2"
    method: str = "lora"
    model: str = "minilm"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("query", "value")
    lora_dropout: float = 0.0
    rslora: bool = False
    adapter_size: int = 64
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = None
    max_length: int = 128
    train_limit: int | None = None
    eval_limit: int | None = None
    seed: int = 0
    source: str = "tsv"
    save_every: int | None = None
    dtype: str = "float32"  # compute dtype; "bfloat16" for GPU/TPU (params stay float32)

    def __post_init__(self) -> None:
        """Every field checked here, the type before the value, each error naming it
        (``validate``), so a bad run fails before it loads anything (the model-dependent
        ones: ``check_rank``, ``check_max_length``)."""
        own = "TrainConfig"
        if not isinstance(self.task, str):
            raise ConfigError(f"{own}.task must be a GLUE task name, got {self.task!r}")
        try:
            get_task(self.task)
        except GlueDataError as e:
            raise ConfigError(f"{own}.task: {e}") from None
        choice(own, "method", self.method, METHODS)
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"{own}.model must name a checkpoint or directory, "
                              f"got {self.model!r}")
        checked = {}
        for f in ("epochs", "batch_size", "eval_batch_size", "adapter_size", "rank"):
            checked[f] = integer(own, f, getattr(self, f), minimum=1)
        for f in ("max_steps", "train_limit", "eval_limit", "save_every"):
            checked[f] = integer(own, f, getattr(self, f), minimum=1, optional=True)
        checked["seed"] = integer(own, "seed", self.seed, minimum=0)
        checked["max_length"] = integer(own, "max_length", self.max_length, minimum=1)
        if checked["max_length"] < 4:
            raise ConfigError(f"{own}.max_length must be at least 4 ([CLS] a [SEP]...), "
                              f"got {self.max_length}")
        checked["alpha"] = real(own, "alpha", self.alpha, low=0, low_open=True)
        for f in ("learning_rate", "max_grad_norm"):
            checked[f] = real(own, f, getattr(self, f), low=0, low_open=True, optional=True)
        checked["weight_decay"] = real(own, "weight_decay", self.weight_decay, low=0)
        checked["warmup_ratio"] = real(own, "warmup_ratio", self.warmup_ratio, low=0, high=1)
        checked["lora_dropout"] = real(own, "lora_dropout", self.lora_dropout, low=0, high=1)
        checked["rslora"] = boolean(own, "rslora", self.rslora)
        checked["targets"] = names(own, "targets", self.targets)
        choice(own, "dtype", self.dtype, tuple(COMPUTE_DTYPES))
        choice(own, "source", self.source, SOURCES)
        for f, v in checked.items():  # normalised: 16 -> 16.0 for floats, a list -> a tuple
            object.__setattr__(self, f, v)
        check_targets(LoRAConfig(rank=self.rank, alpha=self.alpha, targets=self.targets,
                                 dropout=self.lora_dropout, rslora=self.rslora))

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.method]

    def lora_config(self) -> LoRAConfig | None:
        cfg = LoRAConfig(rank=self.rank, alpha=self.alpha, targets=self.targets,
                         dropout=self.lora_dropout, rslora=self.rslora)
        return cfg if self.method == "lora" else None

    def to_json(self) -> dict:
        return {**asdict(self), "targets": list(self.targets), "lr": self.lr}

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


class TrainingDiverged(RuntimeError):
    """The loss, the gradient or a trainable weight became NaN or infinite; the message gives the
    step and where the last good state is (the bad state is never saved over it)."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped ``fit`` after the step in flight; that step's state is saved,
    and ``resume=True`` (``--resume``) continues with the losses of an uninterrupted run."""

    def __init__(self, signum: int, step: int, state_file: Path):
        self.signum, self.step, self.state_file = signum, step, state_file
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; "
                         f"saved {state_file}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 130 for SIGINT, 143 TERM."""
        return 128 + self.signum


class _StopOnSignal:
    """While active, SIGINT and SIGTERM only record the signal: the loop finishes the step in
    flight, saves, and raises ``TrainingInterrupted``. A second signal interrupts at once
    (``KeyboardInterrupt``; atomic writes keep the files whole). The previous handlers come back
    on exit. Only the main thread may own handlers; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous = {}


def target_dims(model: ModelConfig) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of the dense layer behind each LoRA target this model has
    (``models.LORA_TARGETS``; RoBERTa has no pooler)."""
    d, ff = model.hidden_size, model.intermediate_size
    dims = {"query": (d, d), "key": (d, d), "value": (d, d), "attention_output": (d, d),
            "intermediate": (d, ff), "output": (ff, d)}
    if model.model_type == "bert":
        dims["pooler"] = (d, d)
    return dims


def check_rank(lora: LoRAConfig | None, model: ModelConfig, name: str = "the model") -> None:
    """LoRA's update ``A @ B`` has rank at most ``min(d_in, d_out)`` of its layer: a larger
    rank only adds parameters. Checked from the config's shapes, before anything is built."""
    if lora is None:
        return
    dims = target_dims(model)
    check_targets(lora, model.model_type)
    for target in lora.targets:
        d_in, d_out = dims[target]
        if lora.rank > min(d_in, d_out):
            largest = min(min(dims[t]) for t in lora.targets if t in dims)
            raise ValueError(f"--rank {lora.rank} is larger than the {target} layer of {name} "
                             f"allows: it maps {d_in} -> {d_out} features, so its update has "
                             f"rank at most {min(d_in, d_out)}; use --rank <= {largest}")


def check_max_length(cfg: TrainConfig, model: ModelConfig, name: str = "the model") -> None:
    """Training examples no longer than the model's position table (XLA would clamp the
    positions silently); checked before any data is read."""
    positions = model.max_position_embeddings - model.position_offset
    if cfg.max_length > positions:
        raise ValueError(f"--max-length {cfg.max_length} is longer than the {positions} "
                         f"positions of {name}; use --max-length <= {positions}")


def build_model(pre: Pretrained, cfg: TrainConfig) -> SequenceClassifier:
    """The network ``cfg`` trains on ``pre``'s weights; ``cfg``'s rank is checked against the
    checkpoint's layer widths here (``check_rank``)."""
    check_rank(cfg.lora_config(), pre.config, pre.name)
    return SequenceClassifier(pre.config.replace(dtype=cfg.dtype), cfg.lora_config(),
                              cfg.adapter_size if cfg.method == "adapter" else None)


def init_variables(model: SequenceClassifier, params: dict, method: str, rng: jax.Array) -> dict:
    """``{'params': params}`` plus the new variables the method needs (``'lora'`` adapters or
    ``'adapters'`` bottlenecks), created by one forward pass on a dummy batch."""
    new = {"lora": LORA, "adapter": ADAPTERS}.get(method)
    if new is None:
        return {"params": params}
    ids = jnp.zeros((1, 4), jnp.int32)
    _, extra = model.apply({"params": params}, ids, rngs={new: rng}, mutable=[new])
    return {"params": params, new: extra[new]}


def evaluate(apply_fn: Callable, variables: dict, batcher: Batcher, task: Task) -> dict:
    """GLUE metrics and mean loss of ``variables`` over every example of ``batcher``."""
    n = len(batcher.data)
    logits_all = np.zeros((n, task.num_labels), np.float32)
    for batch in batcher.epoch(0):
        index = batch.pop("index")
        logits = np.asarray(predict(apply_fn, variables, batch))
        real = index >= 0
        logits_all[index[real]] = logits[real]
    gold = batcher.data.labels
    loss, _ = task_loss(jnp.asarray(logits_all), jnp.asarray(gold))
    pred = logits_all[:, 0] if task.is_regression else logits_all.argmax(-1)
    return {**compute(task.metrics, pred, gold), "loss": float(loss)}


def _host_batch(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "index"}


@dataclass
class RunResult:
    """What ``fit`` returns (and writes as ``summary.json``)."""

    run_dir: Path
    losses: list[tuple[int, float]]
    epochs: list[dict]
    best: dict | None
    final: dict | None
    step_ms: dict[int, list[float]]  # bucket length -> times of steps that did not compile
    stopped_early: bool = False
    info: dict = field(default_factory=dict)
    state: Any = None  # the final TrainState, for callers that measure or merge right away

    def median_step_ms(self) -> dict[str, float]:
        """Median step time per bucket length (compile steps excluded), e.g. {"T=32": 118.0}."""
        return {f"T={t}": float(np.median(v)) for t, v in sorted(self.step_ms.items())}

    def typical_step(self) -> tuple[int, float]:
        """(bucket length, median ms) of the bucket that ran the most steps."""
        if not self.step_ms:
            return 0, float("nan")
        t = max(self.step_ms, key=lambda k: len(self.step_ms[k]))
        return t, float(np.median(self.step_ms[t]))


RUN_FILES = ("config.json", "metrics.jsonl", "state.safetensors", "adapter.safetensors",
             "summary.json")  # everything fit writes into a run directory


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> list[Path]:
    """What ``fit`` may do with ``run_dir``; returns the old run's files that a new run replaces.

    A new or empty directory takes a new run; a directory holding a run is continued with
    ``resume`` or replaced with ``overwrite`` (its files are deleted only once the new run has
    passed its checks and written its first file), and refused otherwise, naming the files and
    both flags. A directory holding anything a run does not write is never trained into.
    """
    if resume and overwrite:
        raise ValueError(f"{run_dir}: --resume continues the run there and --overwrite replaces "
                         "it; give one of them")
    if resume or not run_dir.is_dir():
        return []
    present = sorted(p.name for p in run_dir.iterdir() if not is_stale_temp(p))
    others = [n for n in present if n not in RUN_FILES]
    if others:
        raise OutputExistsError(f"{run_dir}: holds files that a lora_jax run does not write "
                                f"({', '.join(others[:5])}); train into a new or empty directory "
                                "(--out)")
    if present and not overwrite:
        raise OutputExistsError(f"{run_dir}: already holds a run ({', '.join(present)}) that a new "
                                "run would destroy; give --resume to continue it, --overwrite to "
                                "replace it, or another --out")
    return [run_dir / n for n in present]


def fit(cfg: TrainConfig, run_dir: str | os.PathLike, *, data_dir: str | None = None,
        pretrained: Pretrained | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True, stop_after_steps: int | None = None, mesh: str | None = None,
        on_epoch: Callable[[dict], object] | None = None) -> RunResult:
    """Train ``cfg.method`` on ``cfg.task``; evaluate after each epoch; write the run directory:

    ``config.json``, ``metrics.jsonl`` (one line per step and per evaluation), ``adapter.
    safetensors`` (the trainable leaves, after the last epoch), ``state.safetensors`` (resumable)
    and ``summary.json`` (best and final epoch). ``resume=True`` continues from
    ``state.safetensors`` with the same data order, dropout masks and schedule; a directory
    that already holds a run is refused unless ``resume`` or ``overwrite`` (``check_run_dir``).
    ``stop_after_steps`` stops (with a saved state) after that many steps of this call, as an
    interruption would. ``mesh`` (``"data=N[,model=M]"``, default: every local device on
    ``data``) places the run on a device mesh (``lora_jax.parallel``); it is placement only, so
    a run may resume on another mesh. ``on_epoch(record)`` is called after each epoch's
    evaluation (``record``: epoch, step, dev scores), once that epoch's state is saved.

    What can go wrong is checked before the first step: the config, the run directory (writable,
    with room for two states and the adapter), the data files, the model's shapes. During
    training, SIGINT or SIGTERM saves the state after the step in flight and raises
    ``TrainingInterrupted``; a NaN or infinite loss, gradient or weight raises
    ``TrainingDiverged`` without saving that state. Every file is written atomically, so a
    process killed at any moment leaves the previous or the new state, never a broken one.
    """
    old_run = check_run_dir(Path(run_dir), resume=resume, overwrite=overwrite)
    run_dir = check_writable(run_dir)  # an unwritable --out fails now, not at the first save
    remove_stale_temps(run_dir)  # what a killed run's atomic writes left behind
    state_file = run_dir / "state.safetensors"
    if resume and not state_file.is_file():
        raise FileNotFoundError(f"--resume: no {state_file} to resume from")

    device_mesh = make_mesh(mesh)  # a bad --mesh fails here, before any data is read
    if cfg.batch_size % device_mesh.shape["data"]:
        raise ValueError(f"batch_size {cfg.batch_size} does not split over the mesh's data axis "
                         f"of size {device_mesh.shape['data']}; use a multiple of it")
    task = get_task(cfg.task)
    if cfg.source == "tsv":
        resolve_data_dir(data_dir, task)  # a --data-dir without the task's files fails now
    pre = pretrained or load_pretrained(cfg.model, num_labels=task.num_labels, seed=cfg.seed)
    if pre.config.num_labels != task.num_labels:
        raise ValueError(f"model head has {pre.config.num_labels} outputs, task {task.name} "
                         f"needs {task.num_labels}")
    check_max_length(cfg, pre.config, pre.name)
    model = build_model(pre, cfg)  # checks the rank against its shapes
    tok = load_tokenizer(pre.path, max_length=cfg.max_length)
    train = encode(tok, load_split(task, "train", data_dir=data_dir, source=cfg.source,
                                   limit=cfg.train_limit, seed=cfg.seed))
    dev = encode(tok, load_split(task, "dev", data_dir=data_dir, source=cfg.source,
                                 limit=cfg.eval_limit, seed=cfg.seed))
    if cfg.batch_size > len(train):
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} "
                         f"training examples of {task.name}; use --batch-size <= {len(train)}")
    train_batches = Batcher(train, cfg.batch_size, choose_buckets(train.lengths, cfg.max_length),
                            shuffle=True, seed=cfg.seed)
    dev_batches = Batcher(dev, cfg.eval_batch_size, choose_buckets(dev.lengths, cfg.max_length),
                          shuffle=False)
    per_epoch = len(train_batches)
    total_steps = min(cfg.max_steps or per_epoch * cfg.epochs, per_epoch * cfg.epochs)

    k_init, k_dropout = jax.random.split(jax.random.key(cfg.seed))
    params = pre.params
    label_mean = None
    if task.is_regression and not pre.head_from_checkpoint:
        label_mean = float(np.mean(train.labels))  # see start_head_at: why, and what it changes
        params = start_head_at(params, pre.config, label_mean)
    variables = init_variables(model, params, cfg.method, k_init)
    labels = trainable_labels(variables, cfg.method)
    tx = make_optimizer(labels, learning_rate=cfg.lr, total_steps=total_steps,
                        warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
                        max_grad_norm=cfg.max_grad_norm)
    state = create_train_state(model.apply, variables, cfg.method, tx, k_dropout)
    run_meta = {"config": cfg.to_json(), "base_fingerprint": pre.fingerprint}
    epoch, start = 0, 0
    log_mode = "w"
    past_evals: list[dict] = []
    if resume:
        state, pos = load_state(state_file, state, run_meta)
        epoch, start = pos["epoch"], pos["batch"]
        log_mode = "a"
        past_evals = _truncate_log(run_dir / "metrics.jsonl", int(state.step), epoch)
    check_disk(run_dir, state, run_meta)
    atomic_write(run_dir / "config.json",  # after resume's checks: a refused resume keeps it
                 lambda tmp: Path(tmp).write_text(json.dumps(cfg.to_json(), indent=2) + "\n"))
    for old in old_run:  # --overwrite: the new run is under way, so the old one goes now
        if old.name != "config.json":
            old.unlink(missing_ok=True)
    state = shard_state(state, device_mesh)
    step_on_mesh = sharded_train_step(state, device_mesh)  # train.step_fn, jitted for the mesh

    adapter_meta = {
        "task": task.name, "labels": list(task.labels or []),
        "label_names": list(task.label_names), "base_model": pre.name,
        "base_fingerprint": pre.fingerprint, "model_config": asdict(pre.config),
        "train_config": cfg.to_json(),
    }
    result = RunResult(run_dir, [], past_evals, None, None, {})
    result.info = {"real_token_fraction": train_batches.real_token_fraction(),
                   "buckets": list(train_batches.buckets), "train_examples": len(train),
                   "dev_examples": len(dev), "steps_per_epoch": per_epoch,
                   "total_steps": total_steps}
    if label_mean is not None:
        result.info["head_bias_start"] = label_mean
    seen_shapes: set[tuple] = set()
    ran = 0
    with (open(run_dir / "metrics.jsonl", log_mode, encoding="utf-8") as log,
          _StopOnSignal() as stop,
          tqdm(total=total_steps, initial=int(state.step), disable=not progress,
               desc=f"{task.name} {cfg.method}", unit="step") as bar):
        saver = _Saver(state_file, run_meta, log, int(state.step) if resume else None)
        # an epoch stopped after its last step but before its evaluation (a kill between the two
        # saves) still owes that evaluation: ``start > 0``
        while epoch < cfg.epochs and (int(state.step) < total_steps or start > 0):
            for b, batch in enumerate(train_batches.epoch(epoch, start), start=start):
                if int(state.step) >= total_steps:
                    break
                shape = batch["input_ids"].shape
                t0 = time.perf_counter()
                on_mesh = shard_batch(_host_batch(batch), device_mesh)
                state, metrics = step_on_mesh(state, on_mesh)
                loss = float(metrics["loss"])  # waits for the step: honest timing
                dt = time.perf_counter() - t0
                if shape in seen_shapes:
                    result.step_ms.setdefault(shape[1], []).append(1000 * dt)
                seen_shapes.add(shape)
                step = int(state.step)
                saver.check_finite(step, {"loss": loss,
                                          "gradient norm": float(metrics["grad_norm"])})
                result.losses.append((step, loss))
                log.write(json.dumps({"step": step, "epoch": epoch, "loss": loss}) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}",
                                ex_s=f"{batch['weight'].sum() / dt:.0f}")
                ran += 1
                pos = {"epoch": epoch, "batch": b + 1}
                if cfg.save_every and step % cfg.save_every == 0:
                    saver.save(state, pos)
                if stop.signum is not None:
                    saver.save(state, pos)
                    raise TrainingInterrupted(stop.signum, step, state_file)
                if stop_after_steps is not None and ran >= stop_after_steps:
                    saver.save(state, pos)
                    result.stopped_early, result.state = True, state
                    return result
            epoch, start = epoch + 1, 0
            scores = evaluate(model.apply, state.variables, dev_batches, task)
            record = {"epoch": epoch, "step": int(state.step), "eval": scores}
            result.epochs.append(record)
            log.write(json.dumps(record) + "\n")
            saver.save(state, {"epoch": epoch, "batch": 0})
            if on_epoch is not None:
                on_epoch(record)
            if progress:
                bar.write(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            if stop.signum is not None:
                raise TrainingInterrupted(stop.signum, int(state.step), state_file)
    save_adapter(run_dir / "adapter.safetensors", state.variables, cfg.method, adapter_meta)
    result.final = result.epochs[-1] if result.epochs else None
    if result.epochs:
        result.best = max(result.epochs, key=lambda r: r["eval"][task.primary])
    summary = {"task": task.name, "method": cfg.method, "primary": task.primary,
               "best": result.best, "final": result.final, **result.info,
               "median_step_ms": result.median_step_ms()}
    atomic_write(run_dir / "summary.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    result.state = state
    return result


def check_disk(run_dir: Path, state: TrainState, meta: dict) -> None:
    """Fail before training unless ``run_dir`` can hold what the run writes: the state file
    twice (a new one is written beside the previous one, then renamed over it), the adapter
    file, and a little for logs. The state's size is known once the state exists."""
    state_bytes = state_nbytes(state, meta)
    adapter_bytes = tree_bytes(split(state.variables, state.method)[0])
    old = run_dir / "state.safetensors"
    already = old.stat().st_size if old.is_file() else 0  # replaced in place, already counted
    need = max(2 * state_bytes - already, state_bytes) + adapter_bytes + (1 << 20)
    check_space(run_dir, need, state_bytes,
                f"state.safetensors of {state_bytes:,} bytes, written beside the previous copy, "
                f"and adapter.safetensors of {adapter_bytes:,}")


class _Saver:
    """Saves the state after the log lines up to its step reached the disk, never a state
    with NaN or infinite values, and remembers the last step saved (for the error messages)."""

    def __init__(self, state_file: Path, meta: dict, log: Any, last_step: int | None):
        self.state_file, self.meta, self.log, self.last_step = state_file, meta, log, last_step
        self._last_saved: tuple | None = None

    def check_finite(self, step: int, values: dict[str, float]) -> None:
        for what, value in values.items():
            if not math.isfinite(value):
                raise TrainingDiverged(self._diverged(f"{what} became {value}", step))

    def save(self, state: TrainState, position: dict) -> None:
        step = int(state.step)
        if self._last_saved == (step, position):
            return  # on disk already (save_every, then a stop at the same step)
        bad = _nonfinite_leaf(state)
        if bad:
            raise TrainingDiverged(self._diverged(f"trainable leaf {bad} became NaN or "
                                                  "infinite", step))
        self.log.flush()
        os.fsync(self.log.fileno())  # the log covers the saved step before the state exists
        save_state(self.state_file, state, position, self.meta)
        self.last_step, self._last_saved = step, (step, dict(position))

    def _diverged(self, what: str, step: int) -> str:
        kept = (f"the last good state (step {self.last_step}) is in {self.state_file}"
                if self.last_step is not None else "no state of this run was saved before it")
        return (f"{what} at step {step}; that state was not saved; {kept}. Try a lower "
                "learning rate (--lr) or gradient clipping (--max-grad-norm)")


@jax.jit
def _leaves_finite(tree: Any) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])


def _nonfinite_leaf(state: TrainState) -> str | None:
    """The path of the first trainable leaf holding NaN or inf, or None (one fused check)."""
    trainable = flatten(split(state.variables, state.method)[0])
    if not trainable:
        return None
    ok = np.asarray(_leaves_finite(list(trainable.values())))
    return None if ok.all() else list(trainable)[int(np.argmin(ok))]


def _truncate_log(path: Path, step: int, epochs_done: int) -> list[dict]:
    """Drop log lines written after the state we resume from: steps past ``step``, evaluations
    of epochs past ``epochs_done``, and a last line cut short by a kill. Returns the evaluation
    records kept (the resumed run's summary covers the whole run)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    keep, evals = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            if n == len(lines):  # no newline after it: a write that a kill cut short
                continue
            raise CheckpointFileError(f"{path}:{n}: not a JSON record; the log was damaged "
                                      "or edited, so the run cannot be resumed from it") from None
        if "eval" in record:
            if record.get("epoch", 0) <= epochs_done:
                keep.append(line)
                evals.append(record)
        elif record.get("step", 0) <= step:
            keep.append(line)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in keep)))
    return evals


def restore(adapter_path: str | os.PathLike, *, model: str | None = None,
            loaded: tuple[dict, dict] | None = None
            ) -> tuple[SequenceClassifier, dict, dict, Pretrained]:
    """Load an adapter file onto its base model: (model, variables, metadata, pretrained).

    The base is the one the file names, or ``model`` when given; either way its weights must
    have the fingerprint the adapter recorded.
    """
    loaded = loaded or read_adapter(adapter_path)  # ``read_adapter``'s result, if the caller has it
    meta = loaded[1]
    cfg = adapter_train_config(adapter_path, meta)
    pre = load_pretrained(model or meta.get("base_model", cfg.model),
                          num_labels=head_outputs(meta), seed=cfg.seed)
    net = build_model(pre, cfg)
    template = init_variables(net, pre.params, cfg.method, jax.random.key(0))
    variables, meta = apply_adapter(adapter_path, template, pre.fingerprint, template,
                                    loaded=loaded)
    return net, variables, meta, pre


def head_outputs(meta: dict) -> int:
    """How many outputs the head of an adapter (``read_adapter``'s metadata) has."""
    return max(len(meta.get("labels") or []), 1)


def adapter_task(path: str | os.PathLike, meta: dict, requested: str | None = None, *,
                 cross_task: bool = False) -> Task:
    """The task to evaluate an adapter on: its own by default; ``requested`` when it is the same
    task, or the adapter has none (imported from PEFT without one) and the head fits it. Another
    task's data only with ``cross_task`` (the head's outputs mean the adapter's classes, so
    the score is not that task's), and never with a head of another size."""
    own = get_task(meta["task"]) if meta.get("task") else None
    if requested is None:
        if own is None:
            raise ValueError(f"{path} names no task (imported without --task); give --task")
        return own
    task = get_task(requested)
    n = head_outputs(meta)
    if own is None or own.name == task.name:
        if task.num_labels != n:
            raise ValueError(f"{path}: the adapter's head has {n} output(s), but task "
                             f"{task.name} has {task.num_labels}")
        return task
    differ = (f"{path} was trained on {own.name} (outputs {', '.join(own.label_names)}), but "
              f"--task {task.name} scores {', '.join(task.label_names)}")
    if task.num_labels != n:
        raise ValueError(f"{differ}: a head of {n} output(s) cannot be evaluated on "
                         f"{task.num_labels}")
    if not cross_task:
        raise ValueError(f"{differ}; the score would mean nothing. Give --cross-task to "
                         f"evaluate the {own.name} adapter on {task.name} data anyway")
    return task


def adapter_train_config(path: str | os.PathLike, meta: dict) -> TrainConfig:
    """The ``TrainConfig`` an adapter file records (``read_adapter``'s metadata), checked
    before any base model is loaded: a bad field names the file and the field."""
    try:
        cfg = TrainConfig.from_json(meta.get("train_config") or {"method": meta["method"]})
    except (TypeError, ValueError) as e:
        raise CheckpointFileError(f"{path}: metadata field 'train_config' is not a valid run "
                                  f"config ({e})") from None
    if cfg.method != meta["method"]:
        raise CheckpointFileError(f"{path}: metadata says method {meta['method']!r} but its "
                                  f"train_config says {cfg.method!r}")
    return cfg
