"""``benchmarks/profile_step.py``: the compiled HLO is read right (each dot's FLOPs, the op
groups, the place of an op in the model) and a traced step's busy time lands on its ops."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import profile_step  # noqa: E402


def compiled(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def test_dot_flops_of_a_matmul_and_of_a_batched_one():
    x, w = jnp.ones((64, 32)), jnp.ones((32, 16))
    hlo = profile_step.parse_hlo(compiled(lambda x, w: jnp.tanh(x @ w), x, w))
    dots = [i for i in hlo.values() if i["entry"] and profile_step.group(i) == "dot"]
    assert sum(i["flops"] for i in dots) == 2 * 64 * 32 * 16
    q, k = jnp.ones((2, 3, 8, 4)), jnp.ones((2, 3, 5, 4))
    hlo = profile_step.parse_hlo(
        compiled(lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k), q, k))
    dots = [i for i in hlo.values() if i["entry"] and profile_step.group(i) == "batched dot"]
    assert sum(i["flops"] for i in dots) == 2 * 2 * 3 * 8 * 5 * 4
    hlo = profile_step.parse_hlo(compiled(lambda x: jnp.exp(x) + 1, x))
    assert {profile_step.group(i) for i in hlo.values() if i["entry"]} <= {
        "elementwise", "other", "data movement"}
    assert profile_step.group(None) == "other"


def test_an_ops_place_is_the_same_for_every_layer():
    fwd = "jit(train_step)/jvp(SequenceClassifier)/bert/encoder/layer/3/intermediate/erf"
    bwd = ("jit(train_step)/transpose(jvp(SequenceClassifier))/bert/encoder/layer/0/"
           "attention/self/query/dot_general")
    assert profile_step.where(fwd) == "forward: intermediate/erf"
    assert profile_step.where(fwd.replace("/3/", "/5/")) == "forward: intermediate/erf"
    assert profile_step.where(bwd) == "backward: attention/self/query/dot_general"
    assert profile_step.where("jit(train_step)/mul") == "optimizer: mul"


def test_the_trace_puts_busy_time_on_the_compiled_ops():
    a = jax.random.normal(jax.random.key(0), (256, 256))
    f = jax.jit(lambda a: jnp.tanh(a @ a) @ a)
    hlo = profile_step.parse_hlo(f.lower(a).compile().as_text())
    f(a).block_until_ready()
    busy = profile_step.trace_ops(lambda: f(a), 3)
    traced = {name for name, ns in busy.items() if ns > 0 and name in hlo}
    assert traced, f"no traced op is an instruction of the compiled program: {sorted(busy)}"
    assert sum(hlo[n]["flops"] for n in traced) == 2 * 2 * 256**3
