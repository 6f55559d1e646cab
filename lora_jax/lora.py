"""LoRA, the whole idea: a frozen dense layer plus a trainable low-rank update.

    y = x @ W + b + scale * dropout(x) @ A @ B        scale = alpha / r  (rsLoRA: alpha / sqrt(r))

Flax layout: W (d_in, d_out), A (d_in, r), B (r, d_out). A starts random, B starts at zero, so an
adapted model equals its base model exactly at initialisation (Hu et al. 2021, Section 4.1).

Two descendants change this file and nothing else's arithmetic:

* **DoRA** (Liu et al. 2024, ``dora=True``) splits the adapted weight into a direction and a
  trained magnitude ``m`` (one number per output feature):
  ``W' = m * (W + scale*A@B) / ||W + scale*A@B||``, the norm of each column (over d_in). ``m``
  starts at ``||W||``, so again the model equals its base at initialisation.
* **PiSSA** (Meng et al. 2024, ``init="pissa"``) starts A and B from the top-r singular
  triplets of W and freezes the residual ``W - scale*A@B`` instead of W (``pissa_init``); the
  trained result is handed out as a plain LoRA of rank 2r on the original W
  (``pissa_to_lora``).

QLoRA changes where W comes from, not this arithmetic: with ``quant`` set, the layer reads W's
stored codes and scales (``lora_jax.quant``) and dequantizes them before the same ``x @ W``.

W and b live in the ``'params'`` collection under the checkpoint's own paths; A and B live in a
separate ``'lora'`` collection at the same module path (``.../query/{a,b}``). Without a ``'lora'``
collection the layer is the plain pretrained layer (DoRA's ``m`` sits beside them:
``.../query/{a,b,m}``). ``merge`` folds the update into W for inference with no extra latency;
``unmerge`` takes it out again. Nothing else in the package knows this arithmetic.

A kernel need not be a matrix: a convolution's ``(k1, ..., c_in, c_out)`` or a
``DenseGeneral``'s ``(in..., out...)`` kernel is the matrix ``(prod(in), prod(out))`` read in
row-major order, and ``scale*A@B`` is reshaped back to the kernel's shape (``lora_jax.inject``).
A fused projection (GPT-2's ``c_attn``: query, key and value side by side) may carry one adapter
per part, at ``.../c_attn/query/{a,b}``: its update lands in that part's block of columns only,
as the paper's ``MergedLinear`` does (``FUSED_PARTS``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.quant import dequantize, dequantize_params, is_quantized, stored_shapes
from lora_jax.validate import boolean, choice, integer, names, real

INIT_SCHEMES = ("kaiming", "gaussian", "pissa")
LORA = "lora"  # name of the variable collection that holds the adapters
# The parts of a fused q/k/v projection, in the order of its output columns: an adapter at
# ``<layer>/<part>`` updates only that part's third of the layer's kernel.
FUSED_PARTS = ("query", "key", "value")


@dataclass(frozen=True)
class LoRAConfig:
    """Hyper-parameters of the adapters, validated on construction.

    ``targets`` name layer roles (``query``, ``value``, ...; see ``models.LORA_TARGETS``).
    ``init`` picks A's initialisation: ``kaiming`` (uniform, bound 1/sqrt(d_in), as the reference
    implementation's ``kaiming_uniform_(a=sqrt(5))``) or ``gaussian`` (std 1/r), with B = 0; or
    ``pissa``: A and B from W's principal singular triplets, W replaced by the residual
    (``pissa_init``, applied to the variables after the layers are created). ``dora`` adds the
    magnitude vector ``m`` (DoRA).
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("query", "value")
    dropout: float = 0.0
    init: str = "kaiming"
    rslora: bool = False
    dora: bool = False

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
            "dora": boolean(own, "dora", self.dora),
        }
        for name, value in fields.items():  # normalised: alpha=16 is 16.0, a list a tuple
            object.__setattr__(self, name, value)

    @property
    def scale(self) -> float:
        """The factor in front of ``x @ A @ B``: alpha / r, or alpha / sqrt(r) for rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def init_a(key: jax.Array, shape: tuple[int, int], scheme: str) -> jax.Array:
    """Random A of shape (d_in, r) (PiSSA's A is random here too, until ``pissa_init``)."""
    d_in, r = shape
    if scheme != "gaussian":
        bound = 1.0 / math.sqrt(d_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    return jax.random.normal(key, shape, jnp.float32) / r


class LoRADense(nn.Module):
    """A drop-in for ``flax.linen.Dense`` with an optional low-rank update from ``'lora'``.

    ``role`` is the layer's logical name (``query``, ``intermediate``, ...); the layer carries
    adapters when ``lora`` is given and ``role`` is one of its targets. Adapters are created
    when the ``'lora'`` collection is mutable (``init``) and read when it is present; when it is
    absent the layer is exactly ``x @ W + b``. ``quant`` (QLoRA) names the format its frozen
    kernel is stored in (``lora_jax.quant``): the layer then reads the stored arrays instead of
    ``kernel`` and dequantizes them in the forward pass.
    """

    features: int
    role: str
    lora: LoRAConfig | None = None
    kernel_init: Any = nn.initializers.normal(0.02)
    quant: str | None = None
    parts: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        d_in = x.shape[-1]
        shape = (d_in, self.features)
        if self.quant is None:
            kernel = self.param("kernel", self.kernel_init, shape)
            xw = x @ kernel.astype(x.dtype)  # (..., d_out)
        else:
            stored = {name: self.param(name, lambda _, s=s: jnp.zeros(s.shape, s.dtype))
                      for name, s in stored_shapes(self.quant, shape).items()}
            # dequantized on the fly (XLA:CPU keeps about a float copy of the dequantized
            # kernels live in the compiled step, measured in benchmarks/qlora.py)
            kernel = dequantize(stored, self.quant)
            xw = x @ kernel.astype(x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = xw + bias.astype(x.dtype)
        if not self.has_adapter():
            return y
        cfg = self.lora
        if self.targeted_parts():
            return y + self._part_updates(x, deterministic)
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
        update = cfg.scale * ((h @ a.astype(x.dtype)) @ b.astype(x.dtype))  # (..., d_out)
        if not cfg.dora:
            return y + update
        m = self.variable(LORA, "m", column_norm, kernel).value  # (d_out,), starts at ||W||
        g = dora_gain(kernel, a, b, m, cfg).astype(x.dtype)  # (d_out,)
        # Without dropout this is g * (x @ W + update) + bias, the merged layer's output. With
        # dropout it is PEFT's form: the rescaling of the base term is taken on the dropped-out
        # h, as the update is.
        dropped = cfg.dropout > 0 and not deterministic
        base = h @ kernel.astype(x.dtype) if dropped else xw
        return y + (g - 1) * base + g * update

    def has_adapter(self) -> bool:
        """True when this layer (or a part of it) is targeted and the adapters exist (or are
        being created)."""
        if self.lora is None:
            return False
        if self.role in self.lora.targets:
            if self.targeted_parts():
                raise ValueError(f"LoRAConfig.targets names both the fused layer {self.role!r} "
                                 f"and its parts {self.targeted_parts()}; choose one")
            return self.is_mutable_collection(LORA) or self.has_variable(LORA, "a")
        return bool(self.targeted_parts()) and (self.is_mutable_collection(LORA) or any(
            self.has_variable(LORA, p) for p in self.targeted_parts()))

    def targeted_parts(self) -> tuple[str, ...]:
        return tuple(p for p in self.parts if self.lora is not None and p in self.lora.targets)

    def _part_updates(self, x: jax.Array, deterministic: bool) -> jax.Array:
        """The fused layer's update: each targeted part's ``scale * x @ A @ B`` in its block of
        columns, exact zeros in the others'."""
        cfg = self.lora
        if cfg.dora or self.quant is not None:
            raise ValueError(f"layer {'/'.join(self.scope.path)}: adapters on fused parts are "
                             "plain LoRA (no DoRA, no quantized base)")
        if self.features % len(self.parts):
            raise ValueError(f"layer {'/'.join(self.scope.path)}: {self.features} features do "
                             f"not split into {len(self.parts)} parts")
        width = self.features // len(self.parts)
        h = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
        blocks = [LoRAPart(width, cfg, name=p)(h) if p in cfg.targets
                  else jnp.zeros((*x.shape[:-1], width), x.dtype) for p in self.parts]
        return jnp.concatenate(blocks, axis=-1)  # (..., features)


class LoRAPart(nn.Module):
    """The adapter of one part of a fused layer: ``scale * h @ A @ B`` with A (d_in, r) and
    B (r, width) at ``<layer>/<part>`` in ``'lora'`` (``LoRADense.parts``)."""

    width: int
    lora: LoRAConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        cfg, d_in = self.lora, h.shape[-1]
        if cfg.rank > min(d_in, self.width):
            raise ValueError(f"LoRAConfig.rank={cfg.rank} exceeds min(d_in, d_out)="
                             f"{min(d_in, self.width)} of {'/'.join(self.scope.path)}")
        a = self.variable(LORA, "a", lambda: init_a(self.make_rng(LORA), (d_in, cfg.rank),
                                                    cfg.init)).value  # (d_in, r)
        b = self.variable(LORA, "b", jnp.zeros, (cfg.rank, self.width), jnp.float32).value
        return cfg.scale * ((h @ a.astype(h.dtype)) @ b.astype(h.dtype))  # (..., width)


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


def column_norm(w: jax.Array) -> jax.Array:
    """||W||, one norm per output feature (over d_in): (d_in, d_out) -> (d_out,), in float32."""
    return jnp.linalg.norm(w.astype(jnp.float32), axis=0)


def dora_gain(kernel: jax.Array, a: jax.Array, b: jax.Array, m: jax.Array,
              cfg: LoRAConfig) -> jax.Array:
    """DoRA's ``m / ||W + scale*A@B||`` per output feature, shape (d_out,).

    The norm is a constant in the backward pass (``stop_gradient``), as in PEFT and the paper's
    Section 4.3: the gradient then does not flow through the norm of a (d_in, d_out) matrix, which
    saves its activation memory at a negligible cost in accuracy.
    """
    norm = column_norm(kernel.astype(jnp.float32) + delta_w(a, b, cfg))
    return m / jax.lax.stop_gradient(norm)


def adapted_kernel(kernel: jax.Array, adapter: dict, cfg: LoRAConfig) -> jax.Array:
    """The weight a layer computes with: W + scale*A@B, and for DoRA ``gain * (W + ...)``."""
    w = kernel.astype(jnp.float32) + delta_w(adapter["a"], adapter["b"], cfg)
    if cfg.dora:
        w = w * dora_gain(kernel, adapter["a"], adapter["b"], adapter["m"], cfg)
    return w


def weight_norms(variables: dict, cfg: LoRAConfig) -> dict:
    """``||W + scale*A@B||`` of every DoRA layer, as a tree shaped like ``'lora'`` (leaf
    ``norm``). A DoRA merge folds this away (the merged column norms are ``|m|``, whatever W
    was), so ``unmerge`` needs it: take it before ``merge``, as PEFT caches it."""
    lora = variables[LORA]
    flat = {path: column_norm(kernel + delta_w(_get(lora, path)["a"], _get(lora, path)["b"], cfg))
            for path, kernel in _kernels(variables, lora).items()}

    def build(path: tuple[str, ...], node: Any) -> Any:
        if path in flat:
            return {"norm": flat[path]}
        return {k: build(path + (k,), v) for k, v in node.items() if isinstance(v, dict)}

    return build((), lora)


Path = tuple[str, ...]  # a module path, e.g. ("bert", "encoder", "layer", "0", ...)


def _sites(variables: dict, lora: dict) -> dict[Path, tuple[Path, int | None]]:
    """Adapter path -> (module path of its kernel in ``'params'``, fused part or None).

    An adapter sits at its layer's own path, or at ``<layer>/<part>`` for one part of a fused
    projection (``FUSED_PARTS``). Its update ``(d_in, d_out)`` must fit: the kernel itself
    (read as a matrix when it has more axes), or the part's block of the kernel's columns."""
    params, out = variables["params"], {}
    for path in _adapter_paths(lora):
        d = _get(lora, path)
        shape = (d["a"].shape[0], d["b"].shape[-1])
        where = "/".join(path)
        try:
            out[path] = (path, None)
            kernel = _get(params, path)["kernel"]
        except (KeyError, TypeError):
            try:
                if path[-1] not in FUSED_PARTS:
                    raise KeyError(path[-1])
                out[path] = (path[:-1], FUSED_PARTS.index(path[-1]))
                kernel = _get(params, path[:-1])["kernel"]
            except (KeyError, TypeError):
                raise ValueError(f"adapter at {where} has no kernel at the same path in "
                                 "'params'") from None
        part = out[path][1]
        fused = (kernel.shape[0], kernel.shape[-1] // len(FUSED_PARTS)) if kernel.ndim == 2 \
            else None
        if part is not None and (fused != shape or kernel.shape[-1] % len(FUSED_PARTS)):
            raise ValueError(f"adapter at {where} gives an update of shape {shape}, but a "
                             f"part of the fused kernel of shape {tuple(kernel.shape)} is "
                             f"{fused}")
        if part is None and not _fits(shape, tuple(kernel.shape)):
            raise ValueError(f"adapter at {where} gives an update of shape {shape}, "
                             f"but the kernel has shape {tuple(kernel.shape)}")
    return out


def _fits(shape: tuple[int, int], kernel_shape: tuple[int, ...]) -> bool:
    """Whether a ``(d_in, d_out)`` update is the kernel read as a matrix: the kernel's leading
    axes multiply to d_in and the rest to d_out."""
    lead = 1
    for i, n in enumerate(kernel_shape):
        if lead == shape[0]:
            return math.prod(kernel_shape[i:]) == shape[1]
        lead *= n
    return False


def _kernels(variables: dict, lora: dict) -> dict[tuple[str, ...], jax.Array]:
    """Module path -> the 2-D kernel each adapter of ``lora`` belongs to (DoRA and PiSSA work
    on whole matrices: an adapter on a fused part or a many-axis kernel is refused)."""
    out = {}
    for path, (layer, part) in _sites(variables, lora).items():
        kernel = _get(variables["params"], layer)["kernel"]
        if part is not None or kernel.ndim != 2:
            what = "a fused part" if part is not None else f"a kernel of shape {kernel.shape}"
            raise ValueError(f"adapter at {'/'.join(path)}: DoRA and PiSSA need a whole "
                             f"(d_in, d_out) kernel, not {what}")
        out[path] = kernel
    return out


def _folded(variables: dict, lora: dict, cfg: LoRAConfig, sign: float
            ) -> dict[tuple[str, ...], jax.Array]:
    """Kernel path -> ``W + sign * scale*A@B`` summed over every adapter on that kernel (its
    own, or one per fused part), in float32 and in the kernel's shape."""
    new: dict[tuple[str, ...], jax.Array] = {}
    for path, (layer, part) in _sites(variables, lora).items():
        kernel = _get(variables["params"], layer)["kernel"]
        w = new.get(layer, kernel.astype(jnp.float32))
        ad = _get(lora, path)
        d = sign * delta_w(ad["a"], ad["b"], cfg)  # (d_in, d_out)
        if part is None:
            new[layer] = w + d.reshape(w.shape)
        else:
            width = d.shape[1]
            new[layer] = w.at[:, part * width:(part + 1) * width].add(d)
    return new


def _check_dora(lora: dict, cfg: LoRAConfig, verb: str) -> None:
    """A DoRA config needs ``m`` in every adapter, a plain one none."""
    for path in _adapter_paths(lora):
        if ("m" in _get(lora, path)) != cfg.dora:
            has = "has no magnitude m" if cfg.dora else "has a magnitude m"
            raise ValueError(f"{verb}: adapter at {'/'.join(path)} {has}, but the config says "
                             f"dora={cfg.dora}")


def merge(variables: dict, cfg: LoRAConfig) -> dict:
    """Fold the adapters into the kernels: W' = W + scale * A @ B (DoRA: the gain times that).
    Returns new variables without a ``'lora'`` collection; the input is not modified.

    On a quantized base (QLoRA) the result is a float model: every kernel dequantized, the
    adapted ones plus their update (re-quantizing W' would round the small update away)."""
    if LORA not in variables:
        raise ValueError("merge: variables have no 'lora' collection to merge")
    if is_quantized(variables["params"]):
        variables = {**variables, "params": dequantize_params(variables["params"])}
    lora = variables[LORA]
    _check_dora(lora, cfg, "merge")
    if cfg.dora:
        new = {path: adapted_kernel(kernel, _get(lora, path), cfg)
               for path, kernel in _kernels(variables, lora).items()}
    else:
        new = _folded(variables, lora, cfg, +1.0)
    dtypes = {path: _get(variables["params"], path)["kernel"].dtype for path in new}
    new = {path: w.astype(dtypes[path]) for path, w in new.items()}
    out = {k: v for k, v in variables.items() if k != LORA}
    out["params"] = _with_kernels(variables["params"], new)
    return out


def unmerge(merged: dict, lora: dict, cfg: LoRAConfig, norms: dict | None = None) -> dict:
    """Undo ``merge``: W = W' - scale * A @ B. Returns variables with ``'lora'`` restored
    (up to float rounding of the subtraction).

    DoRA also divides by the gain ``m / ||W + scale*A@B||``, whose norm the merged weights no
    longer tell: pass ``norms=weight_norms(variables, cfg)`` taken before the merge.
    """
    if LORA in merged:
        raise ValueError("unmerge: variables still hold a 'lora' collection; they are not merged")
    _check_dora(lora, cfg, "unmerge")
    if cfg.dora and norms is None:
        raise ValueError("unmerge: a DoRA merge cannot be undone from the merged weights alone "
                         "(their column norms are |m| whatever W was); pass "
                         "norms=weight_norms(variables, cfg), taken before merge")
    if cfg.dora:
        new = {}
        for path, kernel in _kernels(merged, lora).items():
            ad = _get(lora, path)
            w = kernel.astype(jnp.float32) * (_get(norms, path)["norm"] / ad["m"])  # W + s*A@B
            new[path] = w - delta_w(ad["a"], ad["b"], cfg)
    else:
        new = _folded(merged, lora, cfg, -1.0)
    new = {path: w.astype(_get(merged["params"], path)["kernel"].dtype)
           for path, w in new.items()}
    out = dict(merged)
    out["params"] = _with_kernels(merged["params"], new)
    out[LORA] = lora
    return out


# ---------------------------------------------------------------------------------------------
# PiSSA: start from W's principal part, hand out a plain LoRA.


def pissa_factors(kernel: jax.Array, cfg: LoRAConfig) -> tuple[jax.Array, jax.Array]:
    """A (d_in, r) and B (r, d_out) with ``scale * A @ B`` = W's rank-r truncated SVD
    ``U_r S_r V_r^T``, the root of the singular values split evenly between them (PEFT's
    ``pissa_init``). An exact SVD: the same kernel gives the same factors every time."""
    u, s, vt = jnp.linalg.svd(kernel.astype(jnp.float32), full_matrices=False)
    root = jnp.sqrt(s[: cfg.rank] / cfg.scale)  # (r,)
    return u[:, : cfg.rank] * root, root[:, None] * vt[: cfg.rank]  # (d_in, r), (r, d_out)


def pissa_init(variables: dict, cfg: LoRAConfig) -> dict:
    """Freshly created variables -> PiSSA's start: every adapted layer's A, B from its kernel's
    principal singular triplets and the kernel replaced by the residual ``W - scale*A@B``, so
    the model equals its base (up to float rounding of that subtraction). A DoRA ``m`` stays
    ``||W||``."""
    lora, new_lora, new_kernels = variables[LORA], {}, {}
    for path, kernel in _kernels(variables, lora).items():
        a, b = pissa_factors(kernel, cfg)
        new_kernels[path] = (kernel - delta_w(a, b, cfg)).astype(kernel.dtype)
        new_lora[path] = {**_get(lora, path), "a": a, "b": b}
    return {**variables, "params": _with_kernels(variables["params"], new_kernels),
            LORA: _replace_adapters(lora, new_lora)}


def pissa_to_lora(lora: dict, base_params: dict, cfg: LoRAConfig) -> tuple[dict, LoRAConfig]:
    """A trained PiSSA ``'lora'`` tree -> the plain LoRA of rank 2r that gives the same model on
    the *original* ``base_params``: ``A'B' - A0B0 = [A' | A0] @ [B' ; -B0]`` (A0, B0 recomputed
    from the original kernels by ``pissa_factors``), under a config whose scale is unchanged
    (alpha doubled; sqrt(2) times for rsLoRA), as PEFT's conversion writes it."""
    kernels = _kernels({"params": base_params}, lora)
    new_lora = {}
    for path, kernel in kernels.items():
        ad = _get(lora, path)
        a0, b0 = pissa_factors(kernel, cfg)
        new_lora[path] = {**ad, "a": jnp.concatenate([ad["a"], a0], axis=1),  # (d_in, 2r)
                          "b": jnp.concatenate([ad["b"], -b0], axis=0)}  # (2r, d_out)
    alpha = cfg.alpha * (math.sqrt(2.0) if cfg.rslora else 2.0)
    plain = dataclasses.replace(cfg, rank=2 * cfg.rank, alpha=alpha, init="kaiming")
    return _replace_adapters(lora, new_lora), plain


def _replace_adapters(lora: dict, new: dict[tuple[str, ...], dict]) -> dict:
    def rebuild(node: Any, path: tuple[str, ...]) -> Any:
        if path in new:
            return new[path]
        return {k: rebuild(v, path + (k,)) for k, v in node.items()} if isinstance(node, dict) \
            else node

    return rebuild(lora, ())


# ---------------------------------------------------------------------------------------------
# A fused layer's part adapters as one adapter on the whole layer (for PEFT, which has no parts).


def fuse_parts(variables: dict) -> tuple[dict, int]:
    """Every fused layer's part adapters (``<layer>/query/{a,b}``, ...) -> one adapter on the
    whole layer with the same update: ``A = [A_q | A_v]`` (d_in, n*r) and ``B`` (n*r, 3*width)
    holding each part's B in its own rows and its own block of columns, zeros elsewhere. Returns
    the new ``'lora'`` tree and n, the number of parts per layer: the rank grows n times, so
    keep the scale by multiplying alpha by n (sqrt(n) for rsLoRA)."""
    lora = variables[LORA]
    layers: dict[Path, dict[str, dict]] = {}
    for path, (layer, part) in _sites(variables, lora).items():
        if part is not None:
            layers.setdefault(layer, {})[FUSED_PARTS[part]] = _get(lora, path)
    counts = {len(parts) for parts in layers.values()}
    if len(counts) > 1:
        raise ValueError("fuse_parts: the fused layers adapt different numbers of parts")
    new = {}
    for layer, parts in layers.items():
        names = [p for p in FUSED_PARTS if p in parts]
        r, width = parts[names[0]]["b"].shape  # (r, width)
        b = jnp.zeros((len(names) * r, len(FUSED_PARTS) * width), jnp.float32)
        for i, name in enumerate(names):
            col = FUSED_PARTS.index(name) * width
            b = b.at[i * r:(i + 1) * r, col:col + width].set(parts[name]["b"])
        new[layer] = {"a": jnp.concatenate([parts[p]["a"] for p in names], axis=1), "b": b}

    return _replace_adapters(lora, new), counts.pop() if counts else 1
