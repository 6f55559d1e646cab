"""Quantized frozen weights, for QLoRA (Dettmers et al. 2023, arXiv 2305.14314).

A frozen kernel needs no gradient and no optimizer state, so after LoRA the base's own bytes
fill the memory. QLoRA stores them in 4 bits and dequantizes each kernel on the fly in the
forward pass; A and B stay in float. Three formats, as pure functions over arrays:

* ``nf4``: NormalFloat-4. The 16 levels are quantiles of N(0, 1) scaled to [-1, 1], with an
  exact zero (``nf4_levels``; the paper's Appendix E lists them). The kernel, flattened, is cut
  into blocks of 64; each block is divided by its absolute maximum (a float32 scale) and each
  value replaced by the code of its nearest level; two 4-bit codes are packed per byte.
  4 + 32/64 = 4.5 bits per weight.
* ``nf4-dq``: the same with double quantization: the block scales, minus their mean, are
  themselves quantized to int8 in blocks of 256 (absmax). 4 + 8/64 + 32/(64*256) = 4.127 bits
  per weight. (The paper quantizes the scales to an 8-bit float; linear int8 is our simpler
  choice, with the same size.)
* ``int8``: absmax per output channel (a column of our (d_in, d_out) kernel): 8 bits per
  weight plus one float32 per column.

A quantized kernel is a dict of arrays: ``codes`` (NF4: (d_in, d_out / 2) bytes, two codes
each; int8: (d_in, d_out)) and its scales; the format and the kernel's shape follow from them
(``format_of``, ``kernel_shape``), so nothing else is stored. Embeddings, biases and
LayerNorms stay float: they are a vector per token or per feature (the embedding table is
looked up, not multiplied), and their precision sets the scale every layer sees.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMATS = ("nf4", "nf4-dq", "int8")
NF4_BLOCK = 64  # weights per absmax scale (NF4)
SCALE_BLOCK = 256  # scales per int8 scale (double quantization)

# The paper's NF4 levels (Appendix E), as published; ``nf4_levels`` derives them.
NF4_PAPER = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
             0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
             0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)


def nf4_levels() -> np.ndarray:
    """The 16 NF4 levels, from the normal quantiles as the paper builds them: 8 positive values
    at quantiles evenly spaced in probability from ``offset`` down to 1/2 (exclusive), 7
    negative ones likewise, and an exact 0; divided by the largest so they span [-1, 1].
    ``offset = 1 - (1/32 + 1/30) / 2`` puts the outermost levels at the middle of the last
    1/32 and 1/30 of probability, instead of at the infinite quantile of 1."""
    offset = 1 - 0.5 * (1 / 32 + 1 / 30)
    ppf = NormalDist().inv_cdf
    positive = [ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]  # 8
    negative = [-ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]  # 7
    levels = np.sort(np.array(positive + [0.0] + negative))
    return (levels / levels.max()).astype(np.float32)


NF4_LEVELS = nf4_levels()


def pack4(codes: jax.Array) -> jax.Array:
    """(2n,) codes in [0, 16) -> (n,) bytes, the first code of each pair in the high nibble."""
    pairs = codes.astype(jnp.uint8).reshape(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack4(packed: jax.Array) -> jax.Array:
    """Inverse of ``pack4``: (n,) bytes -> (2n,) codes."""
    return jnp.stack([packed >> 4, packed & 0xF], axis=1).reshape(-1)


def _blocks(x: jax.Array, block: int) -> tuple[jax.Array, int]:
    """``x`` flattened and zero-padded to whole blocks: (n_blocks, block), and its size."""
    flat = x.reshape(-1)
    n = flat.size
    return jnp.pad(flat, (0, (-n) % block)).reshape(-1, block), n


def _absmax_int8(x: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Linear int8 of a 1-D array in blocks: codes (padded size,) and one scale per block."""
    blocks, _ = _blocks(x, block)
    scale = jnp.max(jnp.abs(blocks), axis=1) / 127  # (n_blocks,)
    safe = jnp.where(scale > 0, scale, 1.0)
    codes = jnp.clip(jnp.round(blocks / safe[:, None]), -127, 127).astype(jnp.int8)
    return codes.reshape(-1), scale


STORED = {"nf4": ("codes", "absmax"), "int8": ("codes", "scale"),
          "nf4-dq": ("codes", "absmax_codes", "absmax_scale", "absmax_mean")}


def format_of(node: dict) -> str | None:
    """The format of a module's stored arrays (``None``: a float ``kernel``, or no kernel)."""
    keys = set(node) - {"bias"}
    return next((f for f, names in STORED.items() if keys == set(names)), None)


def kernel_shape(stored: dict) -> tuple[int, int]:
    codes = stored["codes"]
    if codes.dtype == jnp.int8:
        return tuple(codes.shape)
    return codes.shape[0], 2 * codes.shape[1]


def quantize(w: jax.Array, fmt: str) -> dict[str, jax.Array]:
    """A float kernel (d_in, d_out) -> its stored arrays in ``fmt`` (see the module doc)."""
    w = jnp.asarray(w, jnp.float32)
    if w.ndim != 2 or (fmt != "int8" and w.shape[1] % 2):
        raise ValueError(f"quantize: a kernel (d_in, d_out) with d_out even for {fmt}, got "
                         f"shape {w.shape}")
    if fmt == "int8":
        scale = jnp.max(jnp.abs(w), axis=0) / 127  # (d_out,): per output channel
        safe = jnp.where(scale > 0, scale, 1.0)
        return {"codes": jnp.clip(jnp.round(w / safe), -127, 127).astype(jnp.int8),
                "scale": scale}
    check_format(fmt)
    blocks, _ = _blocks(w, NF4_BLOCK)  # (n_blocks, 64)
    absmax = jnp.max(jnp.abs(blocks), axis=1)  # (n_blocks,)
    normed = blocks / jnp.where(absmax > 0, absmax, 1.0)[:, None]  # in [-1, 1]
    midpoints = jnp.asarray((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2)
    codes = jnp.searchsorted(midpoints, normed.reshape(-1)[: w.size])  # the nearest level's index
    out = {"codes": pack4(codes).reshape(w.shape[0], w.shape[1] // 2)}
    if fmt == "nf4":
        return {**out, "absmax": absmax}
    mean = jnp.mean(absmax)
    q, scale = _absmax_int8(absmax - mean, SCALE_BLOCK)
    return {**out, "absmax_codes": q, "absmax_scale": scale, "absmax_mean": mean}


def dequantize(stored: dict[str, jax.Array], fmt: str, dtype: Any = jnp.float32) -> jax.Array:
    """Stored arrays -> the float kernel they approximate, in ``dtype``."""
    if fmt == "int8":
        return (stored["codes"].astype(jnp.float32) * stored["scale"]).astype(dtype)
    check_format(fmt)
    if fmt == "nf4":
        absmax = stored["absmax"]
    else:
        codes = stored["absmax_codes"].astype(jnp.float32).reshape(-1, SCALE_BLOCK)
        absmax = (codes * stored["absmax_scale"][:, None]).reshape(-1) + stored["absmax_mean"]
    shape = kernel_shape(stored)
    values, n = _blocks(jnp.asarray(NF4_LEVELS)[unpack4(stored["codes"].reshape(-1))], NF4_BLOCK)
    flat = (values * absmax[: values.shape[0], None]).reshape(-1)[:n]  # (n_blocks, 64) scaled
    return flat.reshape(shape).astype(dtype)


def stored_shapes(fmt: str, shape: tuple[int, int]) -> dict[str, jax.ShapeDtypeStruct]:
    """The arrays ``quantize`` returns for a kernel of ``shape``, without computing them."""
    return jax.eval_shape(lambda: quantize(jnp.zeros(shape), fmt))


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}; choose one of {FORMATS}")
    return fmt


def quantize_params(params: dict, fmt: str, prefix: str) -> dict:
    """A float ``'params'`` tree with every dense kernel under ``prefix`` (the encoder:
    ``bert``/``roberta``, BERT's pooler included) replaced by its stored arrays in ``fmt``; the
    head, embeddings, biases and LayerNorms stay float."""
    check_format(fmt)

    def walk(node: Any, inside: bool) -> Any:
        if not isinstance(node, dict):
            return node
        kernel = node.get("kernel")
        if inside and kernel is not None and getattr(kernel, "ndim", 0) == 2:
            rest = {k: v for k, v in node.items() if k != "kernel"}
            return {**rest, **quantize(kernel, fmt)}
        return {k: walk(v, inside or k == prefix) for k, v in node.items()}

    return walk(params, False)


def dequantize_params(params: dict) -> dict:
    """Inverse of ``quantize_params`` (up to the quantization error): every module's stored
    arrays back to a float ``kernel``."""
    def walk(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        fmt = format_of(node)
        if fmt is not None:
            rest = {k: v for k, v in node.items() if k not in STORED[fmt]}
            return {**rest, "kernel": dequantize(node, fmt)}
        return {k: walk(v) for k, v in node.items()}

    return walk(params)


def is_quantized(params: dict) -> bool:
    """Whether any module of ``params`` holds stored (quantized) arrays."""
    if not isinstance(params, dict):
        return False
    return format_of(params) is not None or any(is_quantized(v) for v in params.values())
