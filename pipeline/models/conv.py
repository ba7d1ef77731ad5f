"""A convolution whose gradients XLA:CPU runs on its fast path inside loops.

XLA:CPU runs a convolution with Eigen only when its dimension numbers are canonical
(NHWC input, HWIO kernel, NHWC output); its pass that rewrites other convolutions into
that form visits the top-level computation only. The gradient convolutions JAX emits are
not canonical, so inside the ``lax.scan`` of K steps per call they would fall to a naive
loop, slower than one step per call (docs/models.md has the figures). On CPU this
convolution states its two gradient convolutions in canonical form itself (explicit
transposes around them); other backends get ``lax.conv_general_dilated`` unchanged.
Only stride-1, undilated, ungrouped 'SAME' convolutions take this path; any other
convolution is ``lax.conv_general_dilated`` as it was.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _dimension_numbers(spatial: int) -> lax.ConvDimensionNumbers:
    s = "HWD"[:spatial]
    ones = (1,) * (spatial + 2)
    return lax.conv_dimension_numbers(ones, ones, (f"N{s}C", f"{s}IO", f"N{s}C"))


def _same(kernel: int) -> tuple[int, int]:
    """XLA's 'SAME' padding of one axis at stride 1."""
    return (kernel - 1) // 2, kernel // 2


def _conv(x, w, padding):
    spatial = x.ndim - 2
    return lax.conv_general_dilated(x, w, (1,) * spatial, padding, dimension_numbers=_dimension_numbers(spatial))


@jax.custom_vjp
def canonical_conv(x, w):
    """'SAME' stride-1 convolution of (B, *spatial, C_in) by (*kernel, C_in, C_out)."""
    return _conv(x, w, [_same(k) for k in w.shape[:-2]])


def _forward(x, w):
    return canonical_conv(x, w), (x, w)


def _backward(residuals, g):
    x, w = residuals
    spatial = x.ndim - 2
    kernel = w.shape[:spatial]
    axes = tuple(range(1, spatial + 1))
    # Input gradient: g correlated with the flipped kernel, its in and out channels swapped.
    w_flipped = jnp.swapaxes(jnp.flip(w, axis=tuple(range(spatial))), -2, -1)
    dx = _conv(g, w_flipped, [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel, map(_same, kernel))])
    # Kernel gradient: x's channels play the batch and the batch plays the channels.
    x_t = jnp.transpose(x, (spatial + 1, *axes, 0))  # C_in, *spatial, B
    g_t = jnp.transpose(g, (*axes, 0, spatial + 1))  # *spatial, B, C_out
    dw_t = _conv(x_t, g_t, [_same(k) for k in kernel])  # C_in, *kernel, C_out
    return dx.astype(x.dtype), jnp.transpose(dw_t, (*axes, 0, spatial + 1)).astype(w.dtype)


canonical_conv.defvjp(_forward, _backward)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """``lax.conv_general_dilated``'s signature (what ``nnx.Conv`` calls), canonical on CPU where it can be."""
    full = functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                             lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                             dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                             precision=precision, **kwargs)
    spatial = lhs.ndim - 2
    kernel = rhs.shape[:spatial]

    def ones(v) -> bool:
        return v is None or tuple(v) == (1,) * spatial

    simple = (
        ones(window_strides) and ones(lhs_dilation) and ones(rhs_dilation) and feature_group_count == 1
        and precision is None and all(v is None for v in kwargs.values())
        and dimension_numbers == _dimension_numbers(spatial)
        and (padding == "SAME" or [tuple(p) for p in padding] == [_same(k) for k in kernel])
    )
    if not simple:
        return full(lhs, rhs)
    return lax.platform_dependent(lhs, rhs, cpu=canonical_conv, default=full)
