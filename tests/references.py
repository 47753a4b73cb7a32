"""Plain, obviously-correct references the fast paths are tested against.

Everything here is written from the definitions in DESIGN.md section 3, densely and in
float64, independently of the implementations under test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    b, n, e = t.shape
    return t.view(b, n, h, e // h).transpose(1, 2)


def dense_attention(layer, x: torch.Tensor, mask: torch.Tensor, kv_source: torch.Tensor | None = None,
                    prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with an explicit (L, K) boolean mask, using ``layer``'s projections.

    Keys/values come from ``kv_source`` (default x), with ``prefix`` rows (G, E) prepended.
    """
    h = layer.num_heads
    src = x if kv_source is None else kv_source
    if prefix is not None:
        src = torch.cat([prefix[None].expand(x.shape[0], -1, -1), src], dim=1)
    q, k, v = _heads(layer.q_proj(x), h), _heads(layer.k_proj(src), h), _heads(layer.v_proj(src), h)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    b, _, n, dh = out.shape
    return layer.out_proj(out.transpose(1, 2).reshape(b, n, h * dh))


def strided_mask(length: int, stride: int, causal: bool) -> torch.Tensor:
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    mask = (i - j) % stride == 0
    return mask & (j <= i) if causal else mask


def local_global_mask(length: int, window: int, num_global: int, causal: bool) -> torch.Tensor:
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    local = (i - j).abs() <= window // 2
    if causal:
        local = local & (j <= i)
    return torch.cat([torch.ones(length, num_global, dtype=torch.bool), local], dim=1)


def scan_reference_f64(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None):
    """The selective-scan recurrence step by step in float64 from ``initial_state`` (default
    zero); returns (y, last_state)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    state = torch.zeros(b, d, A.shape[1], dtype=torch.float64) if initial_state is None else initial_state.double()
    ys = []
    for t in range(length):
        decay = torch.exp(torch.einsum("bd,dn->bdn", delta[:, :, t], A))
        state = decay * state + torch.einsum("bd,bn->bdn", delta[:, :, t] * u[:, :, t], B[:, :, t])
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y, state


def favor_features(layer, x: torch.Tensor) -> torch.Tensor:
    """The FAVOR+ feature map of ``layer`` by its definition (module docstring of
    hvlm_export.modules.performer), unstabilised: (B, H, L, Dh) -> (B, H, L, m). Keep inputs
    small (float64, moderate logits) so that exp does not overflow."""
    if layer.kernel == "elu":
        return F.elu(x) + 1.0
    xs = x * layer.head_dim**-0.25
    proj = xs @ layer.projection_matrix.to(x.dtype).T
    if layer.kernel == "relu":
        return F.relu(proj) + 1e-3
    logits = proj - (xs * xs).sum(-1, keepdim=True) / 2
    return torch.maximum(torch.exp(logits), 1e-4 * torch.exp(logits.amax(-1, keepdim=True)))


def dense_kernelised(layer, x: torch.Tensor) -> torch.Tensor:
    """phi(Q) phi(K)^T as an explicit L x L matrix (lower triangle if causal), normalised
    row-wise, with ``layer``'s projections: the definition of Performer attention."""
    h = layer.num_heads
    q, k, v = _heads(layer.q_proj(x), h), _heads(layer.k_proj(x), h), _heads(layer.v_proj(x), h)
    a = favor_features(layer, q) @ favor_features(layer, k).transpose(-2, -1)
    if layer.causal:
        a = a.tril()
    out = (a / a.sum(-1, keepdim=True)) @ v
    b, _, n, dh = out.shape
    return layer.out_proj(out.transpose(1, 2).reshape(b, n, h * dh))
