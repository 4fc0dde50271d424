"""Attention in numpy float64, the yardstick for checking flashkv's answers (docs/api.md):
causal masks aligned bottom-right (query i of Sq sees keys j <= i + Skv - Sq), GQA/MQA (query
head h reads KV head h // (Hq // Hkv)), default scale 1/sqrt(D), natural-log LSE. A query row
that sees no key gets output 0 and LSE -inf.

Inputs may be any fp16/bf16/fp32 form the client accepts (uint16 = bf16 bits); they are widened
exactly to float64.
"""

import numpy as np

from .tensor import is_torch_tensor, to_float32


def to_float64(x) -> np.ndarray:
    """float64 values of a float array of any width, or of fp16/bf16/fp32 in any form the client
    accepts (uint16 = bf16 bits), widened exactly."""
    if not is_torch_tensor(x):
        a = np.asarray(x)
        if a.dtype.kind == "f":
            return a.astype(np.float64)
    return to_float32(x).astype(np.float64)


def attention(q, k, v, causal=False, softmax_scale=None):
    """One sequence: q [Sq,Hq,D], k, v [Skv,Hkv,D] -> (out [Sq,Hq,D], lse [Hq,Sq]) float64."""
    q, k, v = (to_float64(x) for x in (q, k, v))
    sq, hq, d = q.shape
    skv, hkv = k.shape[0], k.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of kv heads ({hkv})")
    scale = 1.0 / np.sqrt(d) if softmax_scale is None else float(softmax_scale)
    group = hq // hkv
    kh = np.repeat(k, group, axis=1)  # (Skv, Hq, D)
    vh = np.repeat(v, group, axis=1)
    scores = np.einsum("ihd,jhd->hij", q, kh) * scale  # (Hq, Sq, Skv)
    if causal:
        visible = np.arange(skv)[None, :] <= np.arange(sq)[:, None] + (skv - sq)
        scores = np.where(visible[None], scores, -np.inf)
    peak = scores.max(axis=-1, keepdims=True, initial=-np.inf)
    safe_peak = np.where(np.isfinite(peak), peak, 0.0)
    weights = np.exp(scores - safe_peak)
    total = weights.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        probs = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)
        lse = np.where(total[..., 0] > 0, np.log(np.where(total[..., 0] > 0, total[..., 0], 1.0))
                       + safe_peak[..., 0], -np.inf)
    out = np.einsum("hij,jhd->ihd", probs, vh)
    return out, lse


def attention_fixed(q, k, v, causal=False, softmax_scale=None):
    """q [B,Sq,Hq,D], k, v [B,Skv,Hkv,D] -> (out [B,Sq,Hq,D], lse [B,Hq,Sq]) float64."""
    pairs = [attention(q[b], k[b], v[b], causal, softmax_scale) for b in range(np.shape(q)[0])]
    return np.stack([o for o, _ in pairs]), np.stack([lse for _, lse in pairs])


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_kv, causal=False, softmax_scale=None):
    """Packed q [Tq,Hq,D], k, v [Tkv,Hkv,D] -> (out [Tq,Hq,D], lse [Hq,Tq]) float64."""
    q, k, v = (to_float64(x) for x in (q, k, v))
    out = np.zeros(q.shape, np.float64)
    lse = np.full((q.shape[1], q.shape[0]), -np.inf)
    for b in range(len(cu_seqlens_q) - 1):
        qs, qe = cu_seqlens_q[b], cu_seqlens_q[b + 1]
        ks, ke = cu_seqlens_kv[b], cu_seqlens_kv[b + 1]
        out[qs:qe], lse[:, qs:qe] = attention(q[qs:qe], k[ks:ke], v[ks:ke], causal,
                                              softmax_scale)
    return out, lse


# Elementwise tolerances against this reference, as the C++ tools use them (docs/client.md).
TOLERANCES = {"fp16": (4e-3, 4e-3), "bf16": (3e-2, 3e-2), "fp32": (1e-4, 1e-4)}


def max_violation(got, want, dtype):
    """(largest |got - want|, number of elements beyond atol + rtol * |want| or not finite)."""
    atol, rtol = TOLERANCES[dtype]
    got = to_float32(got, dtype if dtype == "bf16" else None).astype(np.float64)
    want = np.asarray(want, np.float64)
    err = np.abs(got - want)
    bad = ~np.isfinite(got) | (err > atol + rtol * np.abs(want))
    return (float(err.max()) if err.size else 0.0), int(bad.sum())
