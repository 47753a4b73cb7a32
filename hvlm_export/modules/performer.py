"""Performer attention with FAVOR+ random features (Choromanski et al. 2021, arXiv 2009.14794).

Glossary: B batch, H heads, L length, Dh head width, m random features (``nb_features``),
c tokens per chunk, nc = ceil(L / c) chunks.

Softmax attention D^-1 A V with A = exp(Q K^T / sqrt(Dh)) is approximated by
phi(Q) (phi(K)^T V) normalised by phi(Q) (phi(K)^T 1), in O(L m Dh) time (section 2.2).
The feature maps, up to a positive factor per query (which cancels in the normalisation):

* ``kernel='softmax'``: positive random features (Lemma 1), with s = W x' - |x'|^2 / 2,
  x' = x Dh^-1/4, W (m, Dh) of orthogonal blocks with chi(Dh) row norms (section 2.4):
  phi(x) = max(exp(s), eps max_i exp(s_i))   (eps = 1e-4 keeps every normaliser positive).
* ``kernel='relu'``: generalized attention, phi(x) = relu(W x') + 1e-3.
* ``kernel='elu'``: phi(x) = elu(x) + 1 (Katharopoulos et al. 2020), no projection.

Numerics. Every key feature vector is stored as psi_j exp(l_j): psi_j = phi(k_j) / max_i
phi(k_j)_i lies in (0, 1] and l_j = log max_i phi(k_j)_i is a float32 log-weight. Sums
over keys are taken in a frame M >= l_j, weighting key j by exp(l_j - M) <= 1, so nothing
overflows in float16 and the frame cancels exactly between numerator and denominator:

* non-causal: M is the max of l over the sequence (per sequence and head, never across the
  batch);
* causal (the prefix-sum form, appendix B.1, computed chunk-wise): query t uses the running
  max R_t = max_{j <= t} l_j, the chunk sums are kept in the running max at each chunk end,
  and the exclusive prefix over chunks is one (nc x nc) matrix product with weights
  exp(M_c' - M_c) <= 1. Nothing computed for query t depends on a token after t, so the
  output at t is exactly causal (no future leak through a stabiliser or an epsilon).

Inputs in float16/bfloat16 run the projection onto W and every product as half-precision
matmuls (fp32 accumulation inside), with the logits, their maxima, exp and the frame
arithmetic in float32; partial sums are bounded by construction (features <= 1 / sqrt(m),
weights <= 1, sums over at most c keys or averaged), so half precision cannot overflow on
them. Other inputs compute in their own dtype (at least float32).
Reference implementation read: lucidrains/performer-pytorch.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F

from hvlm_export.modules._attention import (
    HALF,
    FusedImpl,
    MultiHeadProjections,
    check_impl,
    check_mask,
    check_positive_int,
    check_sequence,
    crop,
    merge_heads,
    tracing,
    use_fused,
    zero_padding,
)
from hvlm_export.modules._derived import Derived
from hvlm_export.modules._streaming import StateSpec
from hvlm_export.ops.favor import MAX_LENGTH, favor_softmax

__all__ = ["PerformerAttention", "orthogonal_random_features"]

Kernel = Literal["softmax", "relu", "elu"]
_KERNELS = ("softmax", "relu", "elu")
_SOFTMAX_EPS = 1e-4  # floor of a softmax feature relative to its row max: no normaliser reaches 0
_RELU_EPS = 1e-3
#: the log-weight of padding and of "no key yet": exp(_NEG - anything real) == 0, and
#: _NEG - _NEG == 0 (finite, unlike -inf - -inf)
_NEG = -1e30
#: keys per partial sum of the non-causal half-precision path (few partials, no fp16 overflow)
_KEY_SUM_CHUNK = 1024
#: the largest chunk of a streaming step (decode steps are 1 token: pad little)
_STEP_CHUNK = 16


def orthogonal_random_features(
    nb_features: int, head_dim: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(m, Dh) matrix of stacked orthogonal blocks with chi(Dh)-distributed row norms."""
    blocks = []
    for _ in range(math.ceil(nb_features / head_dim)):
        q, _ = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=generator))
        blocks.append(q.T)
    w = torch.cat(blocks)[:nb_features]
    norms = torch.randn(nb_features, head_dim, generator=generator).norm(dim=1)
    return w * norms[:, None]


class PerformerAttention(MultiHeadProjections):
    """FAVOR+ linear attention (see module docstring).

    Args:
        dim: model width E (default 768).
        num_heads: heads H (default 12).
        nb_features: random features m; default int(Dh * ln(Dh)) (at least 1).
        kernel: 'softmax' (FAVOR+), 'relu' or 'elu' (default 'softmax').
        causal: prefix-sum causal attention (default False).
        chunk_size: c, tokens per chunk of the causal sums (default 128).
        impl: 'auto' (default), 'torch' or 'triton'. 'triton' runs the fused kernels of
            ``hvlm::favor_softmax`` (hvlm_export.ops.favor): 'softmax' kernel (causal or
            not), float16/bfloat16 CUDA inputs, no autograd; the features never reach memory.
            'auto' picks it exactly when those conditions hold and Triton is installed,
            else the torch path (the one that exports).
    """

    def __init__(
        self,
        dim: int = 768,
        num_heads: int = 12,
        nb_features: int | None = None,
        kernel: Kernel = "softmax",
        causal: bool = False,
        *,
        chunk_size: int = 128,
        impl: FusedImpl = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, num_heads, 0.0, device=device, dtype=dtype)
        if kernel not in _KERNELS:
            raise ValueError(f"Unknown kernel {kernel!r}.\nNote: valid choices are {', '.join(_KERNELS)}.")
        if nb_features is None:
            nb_features = max(1, int(self.head_dim * math.log(self.head_dim)))
        self.nb_features = check_positive_int("nb_features", nb_features)
        self.kernel = kernel
        self.causal = bool(causal)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.impl = check_impl(impl)
        if kernel == "elu":
            self.register_buffer("projection_matrix", None)
        else:
            self.register_buffer(
                "projection_matrix", orthogonal_random_features(self.nb_features, self.head_dim).to(device)
            )

    @torch.no_grad()
    def redraw_projection(self, generator: torch.Generator | None = None) -> None:
        """Draw a new projection matrix (the only way it ever changes). No-op for 'elu'."""
        if self.projection_matrix is not None:
            w = orthogonal_random_features(self.nb_features, self.head_dim, generator)
            self.projection_matrix.copy_(w.to(self.projection_matrix))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, E), attention_mask: (B, L) or None (1 = real token, right padding) ->
        (B, L, E). Padded positions output 0; non-causal, they are no key (their key
        log-weight is -inf); causal needs no key mask (a real query's earlier keys are real)."""
        check_sequence(x, self.dim)
        mask = None if attention_mask is None else check_mask(attention_mask, x)
        keys = None if self.causal else mask
        if self._use_triton(x):
            q, k, v = self._qkv(x)
            y = favor_softmax(q, k, v, self.projection_matrix, _SOFTMAX_EPS, self.causal, keys,
                              scaled=self._scaled_projection(q.dtype))
            return zero_padding(self.out_proj(y), mask)
        if self.causal:
            return zero_padding(self._causal(x, None)[0], mask)
        cd = _compute_dtype(x.dtype)
        q, k, v = self._qkv(x)  # (B, H, L, Dh)
        qf, _ = self._features(q.to(cd))
        kf, logw = self._features(k.to(cd))
        if keys is not None:
            logw = logw.masked_fill(~keys[:, None, :], _NEG)
        return zero_padding(self.out_proj(merge_heads(self._global(qf, kf, logw, v.to(cd)).to(x.dtype))), mask)

    def _causal(self, x: torch.Tensor, state: dict[str, torch.Tensor] | None):
        """Causal attention of x (B, L, E) continuing from ``state`` (None: the start);
        returns (y, the state after x, or None when ``state`` is None). Steps use chunks of
        at most ``_STEP_CHUNK`` tokens, so a 1-token decode step pads to 16, not to c (the
        result does not depend on the chunk size)."""
        length = x.shape[1]
        cd = _compute_dtype(x.dtype)
        c = self.chunk_size if state is None else min(self.chunk_size, _STEP_CHUNK)
        # whole chunks; padded rows come after every real query and weigh nothing
        nc = (length + c - 1) // c  # (not (c - L % c) % c: shape inference has no rule for Mod)
        xp = F.pad(x, (0, 0, 0, nc * c - length))
        q, k, v = self._qkv(xp)  # (B, H, L', Dh)
        qf, _ = self._features(q.to(cd))
        kf, logw = self._features(k.to(cd))
        padding = torch.arange(xp.shape[1], device=x.device) >= length
        start = None if state is None else (state["sums"], state["frame"])
        out, end = causal_favor(qf, kf, logw.masked_fill(padding, _NEG), v.to(cd), c, start)
        y = self.out_proj(merge_heads(crop(out, 2, length).to(x.dtype)))
        return y, (None if end is None else {"sums": end[0], "frame": end[1]})

    def streaming_error(self) -> str | None:
        return None if self.causal else "it is not causal (build it with causal=True)"

    def state_specs(self) -> list[StateSpec]:
        """The running key sums [phi(K)^T V, phi(K)^T 1] (float32) in the frame exp(frame)."""
        m = self.head_dim if self.kernel == "elu" else self.nb_features
        return [StateSpec("sums", ("batch", self.num_heads, m, self.head_dim + 1), "float32"),
                StateSpec("frame", ("batch", self.num_heads), "float32", _NEG)]

    def _step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._causal(x, state)

    def _use_triton(self, x: torch.Tensor) -> bool:
        """Whether this call runs the fused kernel (see ``impl``)."""
        return use_fused(self.impl, x, self.q_proj.weight, "the 'softmax' kernel", lambda: self._misfit(x))

    def _scaled_projection(self, dtype: torch.dtype) -> torch.Tensor | None:
        """W D^-1/4 in ``dtype`` for the fused kernels, kept between eager calls while the
        projection is unchanged (hvlm_export/modules/_derived.py; a redraw moves its version);
        None while anything traces the call (the op then scales W in its graph)."""
        if tracing():
            return None
        from hvlm_export.ops.favor import scale_projection  # with Triton only, as the fused path

        kept = self.__dict__.setdefault("_kept_projection", {})  # per dtype; absent in older pickles
        if dtype not in kept:
            kept[dtype] = Derived(functools.partial(scale_projection, d=self.head_dim, dtype=dtype))
        return kept[dtype](self.projection_matrix)

    def _misfit(self, x: torch.Tensor) -> str | None:
        """Why the fused kernel cannot serve this call, or None."""
        if self.kernel != "softmax":
            return f"kernel={self.kernel!r}"
        if x.shape[1] > MAX_LENGTH:
            return f"more than {MAX_LENGTH} tokens (the kernels' grid)"
        return None

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, L, Dh) -> (psi, l): psi (B, H, L, m') in x's dtype, scaled by m'^-1/2, each
        row's max 1; l (B, H, L) in at least float32, with phi(x) ~ psi exp(l).

        Written for few passes over the (B, H, L, m) tensors (eager CPU is bound by them):
        the |x'|^2 / 2 term is constant per row, so it cancels in psi and only enters l."""
        m = self.head_dim if self.kernel == "elu" else self.nb_features
        if self.kernel == "elu":
            feats = F.elu(_wide(x)) + 1.0
        else:
            w = self.projection_matrix.to(x.dtype) * self.head_dim**-0.25
            proj = _wide(x @ w.T)  # half-precision matmul for half x
            if self.kernel == "softmax":
                top = proj.amax(-1, keepdim=True)
                # exp(max(s - top, log eps)) / sqrt(m): the floor is applied in place, before exp
                psi = torch.exp((proj - top).clamp_(min=math.log(_SOFTMAX_EPS)).sub_(0.5 * math.log(m)))
                half_sq = _wide(x).square().sum(-1) * (self.head_dim**-0.5 / 2)
                return psi.to(x.dtype), top.squeeze(-1) - half_sq
            feats = F.relu(proj) + _RELU_EPS
        top = feats.amax(-1, keepdim=True)
        return (feats / (top * m**0.5)).to(x.dtype), torch.log(top.squeeze(-1))

    def _global(self, qf: torch.Tensor, kf: torch.Tensor, logw: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Non-causal: phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1) in the sequence's frame.

        Half-precision inputs sum over keys per chunk of 1024 keys (each partial sum bounded
        by 1024 |v| / sqrt(m)) and average the chunks in float32; wider inputs sum at once."""
        weight = torch.exp(logw - logw.amax(-1, keepdim=True))[..., None]  # (B, H, L, 1) <= 1
        vw = torch.cat([v, torch.ones_like(v[..., :1])], -1) * weight.to(v.dtype)  # [v, 1] weighted
        if kf.dtype in HALF:
            kc, vc = _chunks(kf, _KEY_SUM_CHUNK), _chunks(vw, _KEY_SUM_CHUNK)
            sums = _wide(kc.transpose(-2, -1) @ vc).mean(2).to(qf.dtype)  # (B, H, m, Dh + 1), units 1 / nc
        else:
            sums = kf.transpose(-2, -1) @ vw
        out = _wide(qf @ sums)  # numerators and, in the last column, denominators
        return out[..., :-1] / out[..., -1:]

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, nb_features={self.nb_features}, "
            f"kernel={self.kernel!r}, causal={self.causal}, chunk_size={self.chunk_size}, impl={self.impl!r}"
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half inputs compute in half (fp32 statistics); others in at least float32."""
    return dtype if dtype in HALF else torch.promote_types(dtype, torch.float32)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in at least float32 (statistics, logits and exp never run in half precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _chunks(t: torch.Tensor, c: int, fill: float = 0.0) -> torch.Tensor:
    """(B, H, L, ...) -> (B, H, nc, c, ...), padding the end of L with ``fill``."""
    b, h, length = t.shape[:3]
    nc = (length + c - 1) // c
    pads = [0, 0] * (t.dim() - 3) + [0, nc * c - length]
    return F.pad(t, pads, value=fill).view(b, h, nc, c, *t.shape[3:])


def _running_max(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Inclusive running max along the last axis by doubling (Hillis-Steele): ``levels``
    static steps cover 2**levels positions; standard ops only (ONNX has no CumMax)."""
    n = x.shape[-1]
    shift = 1
    for _ in range(levels):
        shifted = F.pad(x, (shift, 0), value=_NEG)[..., :n]
        x = torch.maximum(x, shifted)
        shift *= 2
    return x


def causal_favor(
    qf: torch.Tensor,
    kf: torch.Tensor,
    logw: torch.Tensor,
    v: torch.Tensor,
    chunk: int,
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Exactly causal chunked FAVOR sums (module docstring, "Numerics"):
    out_t = sum_{j<=t} (phi(q_t).phi(k_j)) v_j / sum_{j<=t} phi(q_t).phi(k_j),
    the sums over j including the keys before this call that ``state`` summarises.

    Args:
        qf: (B, H, L, m) query features psi (any positive per-query scale); L a multiple of c.
        kf: (B, H, L, m) key features psi; key j's feature vector is kf_j exp(logw_j).
        logw: (B, H, L) key log-weights in at least float32 (padding: _NEG).
        v: (B, H, L, Dh) values, same dtype as qf/kf.
        chunk: c.
        state: (sums (B, H, m, Dh + 1) float32, frame (B, H) float32): sum_j psi_j
            exp(l_j - frame) [v_j, 1] over the earlier keys, or None (no earlier keys).

    Returns:
        (out (B, H, L, Dh) in at least float32, the state after these keys or None when
        ``state`` is None).
    """
    b, h, length, m = qf.shape
    c, cd = chunk, qf.dtype
    nc = length // c
    qc, kc, lc = qf.view(b, h, nc, c, m), kf.view(b, h, nc, c, m), logw.view(b, h, nc, c)
    d1 = v.shape[-1] + 1
    vc = torch.cat([v, torch.ones_like(v[..., :1])], -1).view(b, h, nc, c, d1)  # [v, 1]: numerator, denominator
    running = _running_max(lc, max(1, math.ceil(math.log2(c))))  # (B, H, nc, c): max of l in the chunk up to t
    tri = torch.ones(nc, nc, dtype=torch.bool, device=qf.device).tril()
    # running max over every key up to each chunk's end (B, H, nc): row c, columns c' <= c
    m_end = torch.where(tri, running[..., -1][..., None, :], _NEG).amax(-1)
    frame0 = torch.full_like(m_end[..., 0], _NEG) if state is None else state[1].to(m_end.dtype)
    m_end = torch.maximum(m_end, frame0[..., None])
    m_prev = torch.cat([frame0[..., None], m_end[..., :-1]], dim=-1)  # frame of everything before chunk c
    r = torch.maximum(running, m_prev[..., None])  # R_t, (B, H, nc, c)

    # chunk sums in their own frame M_end[c]: U_c = sum_j psi_j exp(l_j - M_end) [v_j, 1]
    u = kc.transpose(-2, -1) @ (vc * torch.exp(lc - m_end[..., None])[..., None].to(cd))  # <= c |v| / sqrt(m)
    # exclusive prefix over chunks, in frame M_prev[c]: sum_{c' < c} exp(M_end[c'] - M_prev[c]) U_c'
    strict = torch.ones(nc, nc, dtype=torch.bool, device=qf.device).tril(-1)
    t = torch.exp(torch.where(strict, m_end[..., None, :] - m_prev[..., :, None], _NEG)) / nc
    prefix = (t.to(cd) @ u.flatten(-2)).view(u.shape)  # averaged over nc: bounded like U
    inter = _wide(qc @ prefix) * (torch.exp(m_prev[..., None] - r) * nc)[..., None]
    if state is not None:  # the earlier keys, in float32 (their sums are unbounded)
        earlier = _wide(qc) @ state[0][:, :, None].to(_wide(qc).dtype)  # (B, H, nc, c, Dh + 1)
        inter = inter + earlier * torch.exp(frame0[..., None, None] - r)[..., None]

    # inside the chunk: keys j <= t weighted exp(l_j - R_t) (masked before exp: no inf); each
    # query's row is scaled to a max of c^-1/2 before the half-precision product (no subnormal
    # weights, and its sum over c keys stays below sqrt(c) |v|)
    causal = torch.ones(c, c, dtype=torch.bool, device=qf.device).tril()
    weights = torch.exp(torch.where(causal, lc[..., None, :] - r[..., :, None], _NEG))
    scores = _wide(qc @ kc.transpose(-2, -1)) * weights
    row_scale = scores.amax(-1, keepdim=True).clamp_min(1e-30) * c**0.5
    intra = _wide((scores / row_scale).to(cd) @ vc) * row_scale
    total = (inter + intra).view(b, h, length, d1)  # explicit sizes: export cannot infer -1 here
    out = total[..., :-1] / total[..., -1:]
    if state is None:
        return out, None
    frame = m_end[..., -1]
    decay = torch.exp(m_end - frame[..., None])[..., None, None]  # (B, H, nc, 1, 1) <= 1
    sums = (_wide(u) * decay).sum(2) + state[0] * torch.exp(frame0 - frame)[..., None, None]
    return out, (sums.to(state[0].dtype), frame.to(state[1].dtype))
