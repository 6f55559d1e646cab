"""Interrupted training: SIGINT/SIGTERM save the step in flight and exit with 130/143 and a resume
command; SIGKILL at any moment leaves a checkpoint that loads; and every resume continues with
the losses (and the metrics.jsonl) of an uninterrupted run."""

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
from safetensors import safe_open

import lora_jax.run as run_mod
from lora_jax.checkpoint import META_KEY
from lora_jax.cli import main
from lora_jax.run import _StopOnSignal


def train_args(base, glue, out, *extra):
    return ["train", "--model", str(base), "--data-dir", str(glue), "--max-length", "16",
            "--batch-size", "8", "--epochs", "3", "--rank", "4", "--lora-dropout", "0.1",
            "--lr", "1e-2", "--save-every", "1", "--quiet", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """A persistent compilation cache shared by the subprocesses: only the first compiles."""
    return tmp_path_factory.mktemp("jax_cache")


def start(args, cache):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return subprocess.Popen([sys.executable, "-m", "lora_jax.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=300):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() - t0 < timeout, f"no {path} after {timeout} s"
        time.sleep(0.005)


def saved_step(state_file):
    """The step of a state file, read as a whole file (a broken one raises here)."""
    with safe_open(str(state_file), framework="numpy") as f:
        meta = json.loads(f.metadata()[META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert set(meta["position"]) == {"epoch", "batch"}
    return int(tensors["step"].reshape(()))


@pytest.fixture(scope="module")
def reference(tiny_base, tiny_glue, tmp_path_factory, jax_cache):
    """The uninterrupted run, in a subprocess like the interrupted ones."""
    out = tmp_path_factory.mktemp("reference")
    proc = start(train_args(tiny_base, tiny_glue, out), jax_cache)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def same_run(run, reference):
    assert (run / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    got, want = (json.loads((d / "summary.json").read_text()) for d in (run, reference))
    assert (got["best"], got["final"]) == (want["best"], want["final"])
    assert not list(run.glob(".*.tmp"))


def wait_for_steps(run, proc, steps, timeout=300):
    """Until the log shows ``steps`` steps (it is flushed before each save, so the state is
    at most one step behind)."""
    log, t0 = run / "metrics.jsonl", time.monotonic()
    while not log.exists() or log.read_text().count('"loss"') < steps:
        if proc.poll() is not None:
            return
        assert time.monotonic() - t0 < timeout, f"{steps} steps not reached in {timeout} s"
        time.sleep(0.001)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_any_moment_leaves_a_checkpoint_that_resumes_exactly(
        seed, tiny_base, tiny_glue, tmp_path, jax_cache, reference):
    """Seed s kills in the s-th quarter of the 36 steps, a random few ms after a step: inside a
    step, a save, a log write or an evaluation."""
    rng = random.Random(seed)
    run = tmp_path / "run"
    proc = start(train_args(tiny_base, tiny_glue, run), jax_cache)
    wait_for_steps(run, proc, rng.randint(2 + 9 * seed, 9 + 9 * seed))  # step 1 is saved
    time.sleep(rng.uniform(0.0, 0.03))
    proc.kill()
    proc.communicate()
    assert saved_step(run / "state.safetensors") >= 1  # whole and loadable, whatever the moment
    proc = start(train_args(tiny_base, tiny_glue, run, "--resume"), jax_cache)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    same_run(run, reference)


@pytest.mark.slow
def test_sigint_saves_exits_130_with_a_resume_command_that_finishes(
        tiny_base, tiny_glue, tmp_path, jax_cache, reference):
    run = tmp_path / "run"
    proc = start(train_args(tiny_base, tiny_glue, run), jax_cache)
    wait_for(run / "state.safetensors", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"lora-jax train: interrupted by SIGINT at step (\d+); saved (\S+); "
                     r"resume with: (lora-jax train .* --resume)", last)
    assert m, last
    assert m.group(2) == str(run / "state.safetensors")
    assert saved_step(run / "state.safetensors") == int(m.group(1))  # the step in flight
    proc = start(shlex.split(m.group(3))[1:], jax_cache)  # the command it printed
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    same_run(run, reference)


def test_sigterm_saves_the_step_in_flight_exits_143_and_restores_the_handlers(
        tiny_base, tiny_glue, tmp_path, monkeypatch, capsys):
    real = run_mod.shard_batch
    calls = []

    def shard_and_signal(batch, mesh):  # SIGTERM arrives while step 3 is being prepared
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGTERM)
        return real(batch, mesh)

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(run_mod, "shard_batch", shard_and_signal)
    run = tmp_path / "run"
    args = train_args(tiny_base, tiny_glue, run)
    args[args.index("--save-every"):args.index("--save-every") + 2] = []  # only the stop saves
    args += ["--epochs", "1"]
    assert main(args) == 143
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    err = capsys.readouterr().err.strip()
    assert err == (f"lora-jax train: interrupted by SIGTERM at step 3; saved "
                   f"{run / 'state.safetensors'}; resume with: "
                   f"{shlex.join(['lora-jax', *args, '--resume'])}")
    assert saved_step(run / "state.safetensors") == 3
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main(train_args(tiny_base, tiny_glue, straight, "--epochs", "1")) == 0
    assert (run / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    final = [json.loads((d / "summary.json").read_text())["final"] for d in (run, straight)]
    assert final[0] == final[1]


def test_a_second_signal_interrupts_at_once_and_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), _StopOnSignal() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # recorded, nothing raised yet
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_signal_handlers_are_left_alone_off_the_main_thread():
    seen = []

    def run():
        with _StopOnSignal() as stop:
            seen.append(stop._previous)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [{}]


def test_compare_interrupted_prints_how_to_resume_that_run():
    from pathlib import Path

    from lora_jax.cli import resume_command

    argv = ["compare", "--methods", "full,lora", "--task", "rte", "--out=runs/c", "--epochs", "1"]
    assert resume_command(argv, "compare", Path("runs/c/lora")) == (
        "lora-jax train --method lora --out runs/c/lora --task rte --epochs 1 --resume")
