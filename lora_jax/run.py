"""``fit``: a GLUE task, one method, epochs, evaluation and checkpoints around ``train_step``.

``fit`` reads as set-up -> loop -> finish. The set-up checks everything that can be wrong
before the first step (config, run directory, disk, data, shapes) and builds the state; the
loop only dispatches ``train_step`` and hands its metrics to small host-side pieces:

- ``_Host`` keeps the metrics on the device and reads them back every ``log_every`` steps
  (and at epoch ends, and before any save): the device never waits for the host in between.
  The finite-check of the loss and gradient norm happens there, so a NaN is still caught
  before a state is saved; ``metrics.jsonl`` still gets one line per step. Step times come
  from those windows, not from blocking each step;
- ``_Saver`` writes the resumable state (never a non-finite one) after the log reached the disk;
- ``_StopOnSignal`` turns SIGINT / SIGTERM into a save and ``TrainingInterrupted``;
- ``_Progress`` draws a bar in a terminal, and one line per epoch elsewhere (notebooks).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm  # plain text bars: no ipywidgets needed in notebooks

from lora_jax.checkpoint import (
    CheckpointFileError,
    load_state,
    save_adapter,
    save_state,
    state_nbytes,
)
from lora_jax.config import TrainConfig
from lora_jax.data import (
    Batcher,
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
from lora_jax.models import SequenceClassifier, check_max_length, start_head_at
from lora_jax.optim import split
from lora_jax.parallel import jit_on_mesh, make_mesh, shard_batch, shard_state
from lora_jax.pretrained import Pretrained, load_pretrained
from lora_jax.tokenizer import load_tokenizer
from lora_jax.train import (
    TrainState,
    adapter_to_save,
    build_model,
    evaluate,
    new_train_state,
    train_step,
)
from lora_jax.trees import flatten, tree_bytes

LOG_EVERY = 10  # steps between host reads of the metrics (benchmarks/loop_overhead.py)


def fit(cfg: TrainConfig, run_dir: str | os.PathLike, *, data_dir: str | None = None,
        pretrained: Pretrained | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True, stop_after_steps: int | None = None, mesh: str | None = None,
        on_epoch: Callable[[dict], object] | None = None, log_every: int = LOG_EVERY
        ) -> RunResult:
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
    ``log_every``: steps between reads of the metrics back to the host.

    What can go wrong is checked before the first step: the config, the run directory (writable,
    with room for two states and the adapter), the data files, the model's shapes. During
    training, SIGINT or SIGTERM saves the state after the step in flight and raises
    ``TrainingInterrupted``; a NaN or infinite loss, gradient or weight raises
    ``TrainingDiverged`` without saving that state. Every file is written atomically, so a
    process killed at any moment leaves the previous or the new state, never a broken one.
    """
    run = _set_up(cfg, Path(run_dir), data_dir=data_dir, pretrained=pretrained, resume=resume,
                  overwrite=overwrite, mesh=mesh, log_every=log_every)
    state, epoch, start, result = run.state, run.epoch, run.start, run.result
    with (open(run.run_dir / "metrics.jsonl", run.log_mode, encoding="utf-8") as log,
          _StopOnSignal() as stop, _Progress(progress, run) as bar):
        saver = _Saver(run.state_file, run.meta, log, run.step if resume else None)
        host = _Host(run, log, bar, saver)
        # an epoch stopped after its last step but before its evaluation (a kill between the two
        # saves) still owes that evaluation: ``start > 0``
        while epoch < cfg.epochs and (host.step < run.total_steps or start > 0):
            for b, batch, placed in _placed(run.train_batches.epoch(epoch, start), run.mesh,
                                            start):
                if host.step >= run.total_steps:
                    break
                state = host.train(state, epoch, batch, placed)  # asynchronous
                position = {"epoch": epoch, "batch": b + 1}
                if cfg.save_every and host.step % cfg.save_every == 0:
                    host.save(state, position)
                if stop.signum is not None:
                    host.save(state, position)
                    raise TrainingInterrupted(stop.signum, host.step, run.state_file)
                if stop_after_steps is not None and host.ran >= stop_after_steps:
                    host.save(state, position)
                    result.stopped_early, result.state = True, state
                    return result
            epoch, start = epoch + 1, 0
            host.end_epoch(state, epoch, on_epoch)
            if stop.signum is not None:
                raise TrainingInterrupted(stop.signum, host.step, run.state_file)
    return _finish(run, state)


@dataclass
class _Run:
    """What the set-up hands to the loop."""

    cfg: TrainConfig
    task: Task
    pre: Pretrained
    model: SequenceClassifier
    run_dir: Path
    state_file: Path
    train_batches: Batcher
    dev_batches: Batcher
    total_steps: int
    state: TrainState
    step: int  # the state's step, known on the host (never read back from the device)
    epoch: int
    start: int
    log_mode: str
    meta: dict
    adapter_meta: dict
    mesh: Mesh
    train_step: Callable  # train.train_step, jitted for the mesh
    result: RunResult
    log_every: int


def _set_up(cfg: TrainConfig, run_dir: Path, *, data_dir: str | None,
            pretrained: Pretrained | None, resume: bool, overwrite: bool, mesh: str | None,
            log_every: int) -> _Run:
    """Every check before the first step, in the order that writes nothing until all passed;
    then the state (new, or resumed from ``state.safetensors``) placed on the mesh."""
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be a positive integer, got {log_every!r}")
    old_run = check_run_dir(run_dir, resume=resume, overwrite=overwrite)
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
    pre = pretrained or load_pretrained(cfg.model, num_labels=task.num_labels, seed=cfg.seed,
                                        quantize=cfg.quantize)
    if pre.config.num_labels != task.num_labels:
        raise ValueError(f"model head has {pre.config.num_labels} outputs, task {task.name} "
                         f"needs {task.num_labels}")
    check_max_length(cfg.max_length, pre.config, pre.name)
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

    params, label_mean = pre.params, None
    if task.is_regression and not pre.head_from_checkpoint:
        label_mean = float(np.mean(train.labels))  # see start_head_at: why, and what it changes
        params = start_head_at(params, pre.config, label_mean)
    state = new_train_state(model, params, cfg, total_steps)
    meta = {"config": cfg.to_json(), "base_fingerprint": pre.fingerprint}
    epoch, start, log_mode, past_evals = 0, 0, "w", []
    if resume:
        state, pos = load_state(state_file, state, meta)
        epoch, start, log_mode = pos["epoch"], pos["batch"], "a"
        past_evals = _truncate_log(run_dir / "metrics.jsonl", int(state.step), epoch)
    check_disk(run_dir, state, meta)
    atomic_write(run_dir / "config.json",  # after resume's checks: a refused resume keeps it
                 lambda tmp: Path(tmp).write_text(json.dumps(cfg.to_json(), indent=2) + "\n"))
    for old in old_run:  # --overwrite: the new run is under way, so the old one goes now
        if old.name != "config.json":
            old.unlink(missing_ok=True)
    step = int(state.step)  # the last read of the step from the device
    state = shard_state(state, device_mesh)
    adapter_meta = {
        "task": task.name, "labels": list(task.labels or []),
        "label_names": list(task.label_names), "base_model": pre.name,
        "base_fingerprint": pre.fingerprint, "model_config": asdict(pre.config),
        "train_config": cfg.to_json(),
    }
    result = RunResult(run_dir, [], past_evals, None, None, [])
    result.info = {"real_token_fraction": train_batches.real_token_fraction(),
                   "buckets": list(train_batches.buckets), "train_examples": len(train),
                   "dev_examples": len(dev), "steps_per_epoch": per_epoch,
                   "total_steps": total_steps}
    if label_mean is not None:
        result.info["head_bias_start"] = label_mean
    return _Run(cfg, task, pre, model, run_dir, state_file, train_batches, dev_batches,
                total_steps, state, step, epoch, start, log_mode, meta, adapter_meta,
                device_mesh, jit_on_mesh(train_step, state, device_mesh), result, log_every)


def _placed(batches: Iterator[dict], mesh: Mesh, start: int) -> Iterator[tuple]:
    """``(index, host batch, batch on the mesh)``. Asked for after the previous step was
    dispatched, so each transfer overlaps the step in flight."""
    for b, batch in enumerate(batches, start=start):
        yield b, batch, shard_batch({k: v for k, v in batch.items() if k != "index"}, mesh)


class _Host:
    """The host's side of the loop: metrics stay on the device until ``flush`` reads a window
    of them at once (every ``log_every`` steps, at epoch ends, before a save), checks them,
    logs one line per step and times the window."""

    def __init__(self, run: _Run, log: Any, bar: _Progress, saver: _Saver):
        self.run, self.log, self.bar, self.saver = run, log, bar, saver
        self.step, self.ran = run.step, 0
        self.pending: list[tuple[int, int, dict]] = []  # (step, epoch, metrics on the device)
        self.examples = self.tokens = self.rows = 0
        self.seen: set[tuple] = set()  # batch shapes compiled so far
        self.clock = time.perf_counter()

    def train(self, state: TrainState, epoch: int, batch: dict, placed: dict) -> TrainState:
        """Dispatch one step (it returns at once) and keep its metrics on the device. A step
        of a new batch shape compiles first: it gets a window of its own, left untimed."""
        shape = batch["input_ids"].shape
        new = shape not in self.seen
        if new:
            self.seen.add(shape)
            self.flush()  # close the window before the compile
        state, metrics = self.run.train_step(state, placed)
        self.step, self.ran = self.step + 1, self.ran + 1
        self.pending.append((self.step, epoch, metrics))
        self.examples += float(batch["weight"].sum())
        self.tokens += int(np.prod(shape))
        self.rows += int(shape[0])
        if new or len(self.pending) >= self.run.log_every:
            self.flush(timed=not new)
        return state

    def flush(self, timed: bool = True) -> None:
        """Read the pending metrics back (one transfer), check them, log a line per step."""
        if not self.pending:
            return
        values = jax.device_get([(m["loss"], m["grad_norm"]) for _, _, m in self.pending])
        seconds = time.perf_counter() - self.clock  # the device finished the window's steps
        for (step, epoch, _), (loss, grad_norm) in zip(self.pending, values, strict=True):
            self.saver.check_finite(step, {"loss": float(loss),
                                           "gradient norm": float(grad_norm)})
            self.run.result.losses.append((step, float(loss)))
            self.log.write(json.dumps({"step": step, "epoch": epoch, "loss": float(loss)}) + "\n")
        if timed:
            self.run.result.windows.append({"first_step": self.pending[0][0],
                                            "steps": len(self.pending), "seconds": seconds,
                                            "examples": self.examples, "tokens": self.tokens,
                                            "rows": self.rows})
        self.bar.advance(len(self.pending), float(values[-1][0]), self.examples / seconds)
        self.pending, self.examples, self.tokens, self.rows = [], 0, 0, 0
        self.restart_clock()

    def restart_clock(self) -> None:
        self.clock = time.perf_counter()

    def save(self, state: TrainState, position: dict) -> None:
        self.flush()  # the log and the finite-check cover every step before the state is kept
        self.saver.save(state, position, self.step)
        self.restart_clock()

    def end_epoch(self, state: TrainState, epoch: int, on_epoch: Callable | None) -> None:
        """Evaluate, log the scores, save the state at the epoch's end, report."""
        self.flush()
        run = self.run
        scores = evaluate(run.model.apply, state.variables, run.dev_batches, run.task)
        record = {"epoch": epoch, "step": self.step, "eval": scores}
        run.result.epochs.append(record)
        self.log.write(json.dumps(record) + "\n")
        self.saver.save(state, {"epoch": epoch, "batch": 0}, self.step)
        if on_epoch is not None:
            on_epoch(record)
        self.bar.epoch(epoch, self.step, scores)
        self.restart_clock()


class _Progress:
    """A tqdm bar in a terminal; anywhere else (a notebook, a log file) one line per epoch, so
    that committed notebook outputs hold a few lines instead of thousands of bar updates."""

    def __init__(self, enabled: bool, run: _Run):
        self.enabled, self.run = enabled, run
        self.name = f"{run.task.name} {run.cfg.method}"
        self.loss = self.rate = float("nan")
        self.bar = (tqdm(total=run.total_steps, initial=run.step, desc=self.name, unit="step")
                    if enabled and sys.stderr.isatty() else None)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()

    def advance(self, steps: int, loss: float, examples_per_s: float) -> None:
        self.loss, self.rate = loss, examples_per_s
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{examples_per_s:.0f}")

    def epoch(self, epoch: int, step: int, scores: dict) -> None:
        if not self.enabled:
            return
        dev = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        if self.bar is not None:
            self.bar.write(f"epoch {epoch}: {dev}")
        else:
            print(f"{self.name} epoch {epoch}/{self.run.cfg.epochs}: step {step}/"
                  f"{self.run.total_steps}, loss {self.loss:.4f}, {self.rate:.0f} examples/s; "
                  f"dev {dev}", flush=True)


def _finish(run: _Run, state: TrainState) -> RunResult:
    """The adapter file (the trainable leaves) and ``summary.json``."""
    result, task = run.result, run.task
    variables, saved = adapter_to_save(state.variables, run.pre.params, run.cfg)
    meta = {**run.adapter_meta, "train_config": saved.to_json()}
    if saved != run.cfg:  # converted (PiSSA): the file says what it was trained as
        meta["trained_as"] = run.cfg.to_json()
    save_adapter(run.run_dir / "adapter.safetensors", variables, run.cfg.method, meta)
    result.final = result.epochs[-1] if result.epochs else None
    if result.epochs:
        result.best = max(result.epochs, key=lambda r: r["eval"][task.primary])
    summary = {"task": task.name, "method": run.cfg.method, "primary": task.primary,
               "best": result.best, "final": result.final, **result.info,
               **result.step_time()}
    atomic_write(run.run_dir / "summary.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    result.state = state
    return result


STALLED = 3.0  # a timed window this many times slower per token than the median was stalled


@dataclass
class RunResult:
    """What ``fit`` returns (and writes as ``summary.json``)."""

    run_dir: Path
    losses: list[tuple[int, float]]
    epochs: list[dict]
    best: dict | None
    final: dict | None
    windows: list[dict]  # timed windows (none that compiled): first_step, steps, seconds, ...
    stopped_early: bool = False
    info: dict = field(default_factory=dict)
    state: Any = None  # the final TrainState, for callers that measure or merge right away

    def step_time(self) -> dict:
        """Median milliseconds per step over the timed windows, examples (real rows) per
        second over them, and the mean padded length of their batches.

        A window that took more than ``STALLED`` times the median seconds per padded token is
        left out of the examples per second (and counted in ``stalled_windows``): the process
        was stopped or the machine suspended or busy with something else, and one such window
        would otherwise set the rate of the whole run. Per token, not per step, so that windows
        of long batches are not mistaken for stalls."""
        w = self.windows
        if not w:
            return {"median_step_ms": float("nan"), "examples_per_s": float("nan"),
                    "mean_step_length": float("nan"), "stalled_windows": 0}
        per_token = [x["seconds"] / x["tokens"] for x in w]
        limit = STALLED * float(np.median(per_token))
        kept = [x for x, t in zip(w, per_token, strict=True) if t <= limit]
        return {"median_step_ms": float(np.median([1000 * x["seconds"] / x["steps"] for x in w])),
                "examples_per_s": sum(x["examples"] for x in kept) / sum(x["seconds"]
                                                                         for x in kept),
                "mean_step_length": sum(x["tokens"] for x in w) / sum(x["rows"] for x in w),
                "stalled_windows": len(w) - len(kept)}


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

    def save(self, state: TrainState, position: dict, step: int) -> None:
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


