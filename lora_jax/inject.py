"""LoRA for a model you did not write: adapters on any Flax linen model, without editing it.

``inject(Model, lora)`` (a class or an instance) returns the same model, except that each
``nn.Dense``, ``nn.DenseGeneral``, ``nn.Einsum`` and ``nn.Conv`` whose module path matches one of
``lora.targets`` (regexes, ``re.search`` over the path joined by ``/``, such as
``block_0/attn/query``) adds ``scale * x @ A @ B`` to its output, with A and B read from the
``'lora'`` collection at the layer's own path. That is the convention of ``LoRADense``, so
``merge``, ``unmerge``, the methods' label rules, adapter files and parameter counts work on
the result unchanged, and without a ``'lora'`` collection the model is exactly the plain one.

It works through ``flax.linen.intercept_methods``: while the model runs, every layer call
passes through ``_intercept``, which calls the layer as it is and, for a targeted layer, adds
the update. The user's code is not edited or copied; a subclass of the model's class only wraps
its ``__call__`` in the interceptor (other methods run plain).

What ``x @ A @ B`` means for each kind of layer (A: ``(d_in, r)``, B: ``(r, d_out)``; the kernel,
read as the matrix ``(d_in, d_out)`` in row-major order, is what ``merge`` adds ``scale*A@B`` to):

* ``Dense``: the input's last axis is d_in, ``features`` is d_out.
* ``DenseGeneral``: the input axes ``axis`` (in that order) flattened are d_in, ``features``
  flattened are d_out; the kernel is ``(*in_axes, *features)``. ``batch_dims`` is refused.
* ``Einsum``: the kernel axes summed with the input (in the input, not in the output) are d_in,
  the kernel axes that reach the output are d_out. The kernel must list its summed axes first
  (``'...d,dhk->...hk'``), so that it is that matrix; an axis shared by input, kernel and
  output (a stack of matrices) is refused.
* ``Conv``: the kernel ``(*window, c_in, c_out)`` is the matrix ``(prod(window)*c_in, c_out)``.
  A is a convolution onto r channels with the layer's own window, strides, padding and
  dilation, B a 1x1 convolution back to c_out: PEFT's form of LoRA for convolutions, a rank-r
  update of that matrix. (The paper's ``loralib.ConvLoRA`` factors a
  ``(c_out*k, c_in*k)`` reshape of the PyTorch kernel with rank r*k instead; that reshape only
  fits square 2-D windows, and its rank is not r.) ``feature_group_count`` must be 1.

Not here: DoRA and LoRA dropout (an intercepted layer cannot see its model's train/eval
switch); ``lora_jax.models`` and ``lora_jax.gpt2`` write their layers as ``LoRADense``, which
has both.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.lora import LORA, LoRAConfig, init_a

LAYERS = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv)  # what can carry an adapter


def inject(model: nn.Module | type[nn.Module], lora: LoRAConfig) -> Any:
    """The model (an instance, or a class to instantiate) with LoRA on the layers whose path
    matches ``lora.targets``: ``inject(MyNet, cfg)(width=64)`` or ``inject(MyNet(width=64),
    cfg)``. The result is an instance (subclass) of the model's class with the same fields and
    the same ``'params'`` tree. A target that matches no layer is an error at the first call
    (``init`` or ``apply``), listing the layers there are."""
    if lora.dora or lora.dropout:
        raise ValueError("inject: LoRAConfig.dora and LoRAConfig.dropout are not supported on "
                         "injected layers (they cannot see the model's train/eval switch); "
                         "write the layer as LoRADense for those")
    for pattern in lora.targets:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"inject: LoRAConfig.targets: {pattern!r} is not a regex: {e}"
                             ) from None
    cls = model if isinstance(model, type) else type(model)
    if not issubclass(cls, nn.Module):
        raise TypeError(f"inject: expected a flax.linen Module class or instance, got {cls!r}")

    def __call__(self, *args, **kwargs):
        return _run_intercepted(super(injected, self).__call__, args, kwargs, lora,
                                cls.__name__)

    injected = type(f"LoRA{cls.__name__}", (cls,), {"__call__": __call__, "lora_config": lora,
                                                   "__module__": cls.__module__})
    if isinstance(model, type):
        return injected
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.init and f.name not in ("parent", "name")}
    return injected(**fields)


def _run_intercepted(call, args: tuple, kwargs: dict, lora: LoRAConfig, name: str):
    """The model's own ``__call__`` (``call``), run with every layer call intercepted; then the
    check that each target matched a layer."""
    calls: dict[str, str] = {}  # path of every module called -> its class name
    hits: set[str] = set()  # targets that matched a layer
    busy = [False]  # True while an update is computed (its helper layer is not a target)

    def interceptor(next_fun, args, kwargs, context):
        if busy[0] or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        module = context.module
        path = "/".join(module.path)
        calls[path] = type(module).__name__
        y = next_fun(*args, **kwargs)
        if not isinstance(module, LAYERS):
            return y
        matched = [p for p in lora.targets if re.search(p, path)]
        hits.update(matched)
        if not matched or not (module.is_mutable_collection(LORA)
                               or module.has_variable(LORA, "a")):
            return y
        busy[0] = True
        try:
            return y + _update(module, args, kwargs, lora).astype(y.dtype)
        finally:
            busy[0] = False

    with nn.intercept_methods(interceptor):
        out = call(*args, **kwargs)
    missing = [p for p in lora.targets if p not in hits]
    if missing:
        kinds = {t.__name__ for t in LAYERS}
        layers = ", ".join(f"{p} ({c})" for p, c in calls.items() if c in kinds) or "none"
        others = ", ".join(f"{p} ({c})" for p, c in calls.items() if c not in kinds and p)
        raise ValueError(
            f"LoRA target(s) {missing} match no Dense, DenseGeneral, Einsum or Conv layer of "
            f"{name}; its layers are: {layers}"
            + (f"; other modules, which cannot carry adapters: {others}" if others else ""))
    return out


def _update(module: nn.Module, args: tuple, kwargs: dict, cfg: LoRAConfig) -> jax.Array:
    """``scale * x @ A @ B`` for one intercepted layer call, in the layer's output shape; A and
    B are created at the layer's path when the ``'lora'`` collection is being initialised."""
    x = args[0] if args else kwargs["inputs"]
    kernel = module.get_variable("params", "kernel")
    d_in, to_rows, to_output = _layout(module, x, kernel.shape, args, kwargs)
    d_out = kernel.size // d_in
    if cfg.rank > min(d_in, d_out):
        raise ValueError(f"LoRAConfig.rank={cfg.rank} exceeds min(d_in, d_out)="
                         f"{min(d_in, d_out)} of layer {'/'.join(module.path)}")
    a = module.variable(LORA, "a", lambda: init_a(module.make_rng(LORA), (d_in, cfg.rank),
                                                  cfg.init)).value  # (d_in, r)
    b = module.variable(LORA, "b", jnp.zeros, (cfg.rank, d_out), jnp.float32).value  # (r, d_out)
    xa = to_rows(a.astype(x.dtype))  # (..., r): the input through A
    return to_output(cfg.scale * (xa @ b.astype(x.dtype)))  # (..., d_out) -> the layer's shape


def _layout(module: nn.Module, x: jax.Array, kernel_shape: tuple[int, ...], args: tuple,
            kwargs: dict):
    """``(d_in, through_a, to_output)`` of a layer: the width of its input as a matrix, a
    function that takes A to the input's rows ``(..., r)``, and one that reshapes ``(..., d_out)``
    into the layer's output. Each kind's reading is in the module docstring."""
    name = "/".join(module.path)
    if isinstance(module, nn.Conv):
        if module.feature_group_count != 1 or module.mask is not None:
            raise ValueError(f"layer {name}: LoRA on a grouped or masked convolution is not "
                             "supported")
        window_in = kernel_shape[:-1]  # (*window, c_in)

        def through_a(a):  # the layer's own convolution, onto r channels, with A as kernel
            conv = module.clone(parent=None, features=a.shape[-1], use_bias=False)
            return conv.apply({"params": {"kernel": a.reshape(*window_in, -1)}}, x)

        return math.prod(window_in), through_a, lambda u: u
    if isinstance(module, nn.Einsum):
        spec = kwargs.get("einsum_str") or (args[1] if len(args) > 1 else None) \
            or module.einsum_str
        lhs, rhs, out = _einsum_parts(spec.replace(" ", ""), name)
        ins = "".join(c for c in rhs if c in lhs)
        outs = rhs[len(ins):]
        rest = "".join(c for c in lhs if c not in ins)  # the input's axes that stay
        r = next(c for c in "zyxwvutsrqponmlkjihgfedcba" if c not in spec)
        in_dims, out_dims = kernel_shape[:len(ins)], kernel_shape[len(ins):]
        return (math.prod(in_dims),
                lambda a: jnp.einsum(f"{lhs},{ins}{r}->{rest}{r}", x, a.reshape(*in_dims, -1)),
                lambda u: jnp.einsum(f"{rest}{outs}->{out}",  # into the output's axis order
                                     u.reshape(*u.shape[:-1], *out_dims)))
    if isinstance(module, nn.DenseGeneral):
        if module.batch_dims:
            raise ValueError(f"layer {name}: LoRA on a DenseGeneral with batch_dims is not "
                             "supported (its kernel is a stack of matrices)")
        axis = module.axis if isinstance(module.axis, tuple | list) else (module.axis,)
        axis = tuple(ax % x.ndim for ax in axis)
        n, features = len(axis), kernel_shape[len(axis):]
        rows = jnp.moveaxis(x, axis, tuple(range(x.ndim - n, x.ndim)))  # contracted axes last
        rows = rows.reshape(*rows.shape[: x.ndim - n], -1)  # (..., d_in)
        return (math.prod(kernel_shape[:n]), lambda a: rows @ a,
                lambda u: u.reshape(*u.shape[:-1], *features))
    return kernel_shape[0], lambda a: x @ a, lambda u: u  # Dense


def _einsum_parts(spec: str, name: str) -> tuple[str, str, str]:
    """``'lhs,rhs->out'`` split, after checking that the kernel ``rhs`` is one matrix with its
    summed axes first (see the module docstring)."""
    try:
        operands, out = spec.split("->")
        lhs, rhs = operands.split(",")
    except ValueError:
        raise ValueError(f"layer {name}: einsum {spec!r} is not 'input,kernel->output'"
                         ) from None
    shared = [c for c in rhs if (c in lhs) == (c in out)]
    ins = [c for c in rhs if c in lhs]
    if shared or list(rhs[: len(ins)]) != ins:
        raise ValueError(
            f"layer {name}: einsum {spec!r}: LoRA needs a kernel that is one matrix with the "
            "axes it sums over first and the axes of the output after them"
            + (f"; axes {shared} are in both the input and the output, or in neither"
               if shared else f"; write the kernel as {''.join(ins)}"
                              f"{''.join(c for c in rhs if c not in ins)}"))
    return lhs, rhs, out
