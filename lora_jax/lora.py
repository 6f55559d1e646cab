"""LoRA, the whole idea: a frozen dense layer plus a trainable low-rank update.

    y = x @ W + b + scale * dropout(x) @ A @ B        scale = alpha / r  (rsLoRA: alpha / sqrt(r))

Flax layout: W (d_in, d_out), A (d_in, r), B (r, d_out). A starts random, B starts at zero, so an
adapted model equals its base model exactly at initialisation (Hu et al. 2021, Section 4.1).

W and b live in the ``'params'`` collection under the checkpoint's own paths; A and B live in a
separate ``'lora'`` collection at the same module path (``.../query/{a,b}``). Without a ``'lora'``
collection the layer is the plain pretrained layer. ``merge`` folds the update into W for
inference with no extra latency; ``unmerge`` takes it out again. Nothing else in the package
knows this arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.validate import boolean, choice, integer, names, real

INIT_SCHEMES = ("kaiming", "gaussian")
LORA = "lora"  # name of the variable collection that holds the adapters


@dataclass(frozen=True)
class LoRAConfig:
    """Hyper-parameters of the adapters, validated on construction.

    ``targets`` name layer roles (``query``, ``value``, ...; see ``models.LORA_TARGETS``).
    ``init`` picks A's initialisation: ``kaiming`` (uniform, bound 1/sqrt(d_in), as the reference
    implementation's ``kaiming_uniform_(a=sqrt(5))``) or ``gaussian`` (std 1/r). B is always 0.
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("query", "value")
    dropout: float = 0.0
    init: str = "kaiming"
    rslora: bool = False

    def __post_init__(self) -> None:
        """Types first, then values, each error naming the field (``validate``): a bool, a
        string or an infinite alpha (logits NaN at init: inf * 0) never gets in."""
        own = "LoRAConfig"
        fields = {
            "rank": integer(own, "rank", self.rank, minimum=1),
            "alpha": real(own, "alpha", self.alpha, low=0, low_open=True),
            "targets": names(own, "targets", self.targets),
            "dropout": real(own, "dropout", self.dropout, low=0, high=1),
            "init": choice(own, "init", self.init, INIT_SCHEMES),
            "rslora": boolean(own, "rslora", self.rslora),
        }
        for name, value in fields.items():  # normalised: alpha=16 is 16.0, a list a tuple
            object.__setattr__(self, name, value)

    @property
    def scale(self) -> float:
        """The factor in front of ``x @ A @ B``: alpha / r, or alpha / sqrt(r) for rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def init_a(key: jax.Array, shape: tuple[int, int], scheme: str) -> jax.Array:
    """Random A of shape (d_in, r)."""
    d_in, r = shape
    if scheme == "kaiming":
        bound = 1.0 / math.sqrt(d_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    return jax.random.normal(key, shape, jnp.float32) / r


class LoRADense(nn.Module):
    """A drop-in for ``flax.linen.Dense`` with an optional low-rank update from ``'lora'``.

    ``role`` is the layer's logical name (``query``, ``intermediate``, ...); the layer carries
    adapters when ``lora`` is given and ``role`` is one of its targets. Adapters are created
    when the ``'lora'`` collection is mutable (``init``) and read when it is present; when it is
    absent the layer is exactly ``x @ W + b``.
    """

    features: int
    role: str
    lora: LoRAConfig | None = None
    kernel_init: Any = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        d_in = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (d_in, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = x @ kernel.astype(x.dtype) + bias.astype(x.dtype)  # (..., d_out)
        if not self.has_adapter():
            return y
        cfg = self.lora
        if cfg.rank > min(d_in, self.features):
            raise ValueError(
                f"LoRAConfig.rank={cfg.rank} exceeds min(d_in, d_out)={min(d_in, self.features)} "
                f"of layer {'/'.join(self.scope.path)}"
            )
        a = self.variable(
            LORA, "a", lambda: init_a(self.make_rng(LORA), (d_in, cfg.rank), cfg.init)
        ).value  # (d_in, r)
        b = self.variable(LORA, "b", jnp.zeros, (cfg.rank, self.features), jnp.float32).value
        h = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
        return y + cfg.scale * ((h @ a.astype(x.dtype)) @ b.astype(x.dtype))  # (..., d_out)

    def has_adapter(self) -> bool:
        """True when this layer is targeted and the adapters exist (or are being created)."""
        if self.lora is None or self.role not in self.lora.targets:
            return False
        return self.is_mutable_collection(LORA) or self.has_variable(LORA, "a")


# ---------------------------------------------------------------------------------------------
# merge / unmerge: pure functions over plain variable dicts.


def _adapter_paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Module paths (tuples of names) of every ``{a, b}`` pair in a ``'lora'`` tree."""
    if isinstance(tree, dict) and {"a", "b"} <= set(tree):
        return [prefix]
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _adapter_paths(v, prefix + (k,))]
    return []


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _with_kernels(params: Any, new_kernels: dict[tuple[str, ...], jax.Array]) -> Any:
    """A copy of ``params`` with the kernels at the given module paths replaced."""

    def rebuild(node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        out = {k: rebuild(v, path + (k,)) for k, v in node.items()}
        if path in new_kernels:
            out["kernel"] = new_kernels[path]
        return out

    return rebuild(params, ())


def delta_w(a: jax.Array, b: jax.Array, cfg: LoRAConfig) -> jax.Array:
    """The dense update the adapters stand for: scale * A @ B, shape (d_in, d_out)."""
    return cfg.scale * (a @ b)


def _fold(variables: dict, lora: dict, cfg: LoRAConfig, sign: float) -> dict:
    params = variables["params"]
    new_kernels = {}
    for path in _adapter_paths(lora):
        try:
            kernel = _get(params, path)["kernel"]
        except (KeyError, TypeError):
            raise ValueError(
                f"adapter at {'/'.join(path)} has no kernel at the same path in 'params'"
            ) from None
        ad = _get(lora, path)
        d = delta_w(ad["a"], ad["b"], cfg)
        if d.shape != kernel.shape:
            raise ValueError(
                f"adapter at {'/'.join(path)} gives an update of shape {d.shape}, "
                f"but the kernel has shape {kernel.shape}"
            )
        new_kernels[path] = (kernel + sign * d).astype(kernel.dtype)
    return _with_kernels(params, new_kernels)


def merge(variables: dict, cfg: LoRAConfig) -> dict:
    """Fold the adapters into the kernels: W' = W + scale * A @ B. Returns new variables
    without a ``'lora'`` collection; the input is not modified."""
    if LORA not in variables:
        raise ValueError("merge: variables have no 'lora' collection to merge")
    out = {k: v for k, v in variables.items() if k != LORA}
    out["params"] = _fold(variables, variables[LORA], cfg, +1.0)
    return out


def unmerge(merged: dict, lora: dict, cfg: LoRAConfig) -> dict:
    """Undo ``merge``: W = W' - scale * A @ B. Returns variables with ``'lora'`` restored
    (up to float rounding of the subtraction)."""
    if LORA in merged:
        raise ValueError("unmerge: variables still hold a 'lora' collection; they are not merged")
    out = dict(merged)
    out["params"] = _fold(merged, lora, cfg, -1.0)
    out[LORA] = lora
    return out
