"""Performer attention with FAVOR+ random features (Choromanski et al. 2021, arXiv 2009.14794).

Glossary: B batch, H heads, L length, Dh head width, m random features (``nb_features``).

Softmax attention D^-1 A V with A = exp(Q K^T / sqrt(Dh)) is approximated by
phi(Q) (phi(K)^T V) normalised by phi(Q) (phi(K)^T 1), in O(L m Dh) time (section 2.2):

* ``kernel='softmax'``: positive random features (Lemma 1)
  phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x * Dh^-1/4, with W (m, Dh) made of
  orthogonal blocks whose rows are rescaled by chi(Dh)-distributed norms (section 2.4).
  Max-subtraction stabilisers are exact (they cancel in the normalisation): per query row for
  queries, per (sequence, head) over all keys for keys, never across the batch.
* ``kernel='relu'``: generalized attention, phi(x) = relu(W x') + 1e-3.
* ``kernel='elu'``: phi(x) = elu(x) + 1 (Katharopoulos et al. 2020), no projection.

Causal mode uses the prefix-sum form (appendix B.1) computed chunk-wise: dense within a chunk
of ``chunk_size`` tokens, prefix sums of phi(K)^T V across chunks; no L x L matrix.
Features and sums are computed in float32 whatever the input dtype.
Reference implementation read: lucidrains/performer-pytorch.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from hvlm_export.modules._attention import (
    MultiHeadProjections,
    check_positive_int,
    check_sequence,
    merge_heads,
)

__all__ = ["PerformerAttention", "orthogonal_random_features"]

Kernel = Literal["softmax", "relu", "elu"]
_KERNELS = ("softmax", "relu", "elu")
_SOFTMAX_EPS = 1e-4  # added to positive features so the normaliser never reaches 0
_RELU_EPS = 1e-3


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
        chunk_size: tokens per chunk in causal mode (default 64).
    """

    def __init__(
        self,
        dim: int = 768,
        num_heads: int = 12,
        nb_features: int | None = None,
        kernel: Kernel = "softmax",
        causal: bool = False,
        *,
        chunk_size: int = 64,
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

    def _features(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """phi(x): (B, H, L, Dh) float32 -> (B, H, L, m) (or Dh for 'elu')."""
        if self.kernel == "elu":
            return F.elu(x) + 1.0
        x = x * self.head_dim**-0.25
        proj = x @ self.projection_matrix.to(x.dtype).T
        if self.kernel == "relu":
            return F.relu(proj) + _RELU_EPS
        proj = proj - (x * x).sum(-1, keepdim=True) / 2
        dims = (-1,) if is_query else (-2, -1)
        stabiliser = proj.amax(dim=dims, keepdim=True).detach()
        return (torch.exp(proj - stabiliser) + _SOFTMAX_EPS) * self.nb_features**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, E) -> (B, L, E)."""
        check_sequence(x, self.dim)
        # features and sums in at least float32, whatever the input dtype
        q, k, v = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in self._qkv(x))
        qf, kf = self._features(q, True), self._features(k, False)
        out = self._causal(qf, kf, v) if self.causal else self._global(qf, kf, v)
        return self.out_proj(merge_heads(out.to(x.dtype)))

    @staticmethod
    def _global(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kv = kf.transpose(-2, -1) @ v  # (B, H, m, Dh)
        denom = qf @ kf.sum(dim=-2).unsqueeze(-1)  # (B, H, L, 1)
        return (qf @ kv) / denom

    def _causal(self, qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, length, m = qf.shape
        c = self.chunk_size
        pad = (c - length % c) % c
        nc = (length + pad) // c
        # Padding at the end: padded keys (zeros) come after every real query, so never count;
        # padded queries are ones so their discarded rows stay finite (no 0/0 in backward).
        qc = F.pad(qf, (0, 0, 0, pad), value=1.0).view(b, h, nc, c, m)
        kc = F.pad(kf, (0, 0, 0, pad)).view(b, h, nc, c, m)
        vc = F.pad(v, (0, 0, 0, pad)).view(b, h, nc, c, v.shape[-1])
        tril = torch.ones(c, c, dtype=torch.bool, device=qf.device).tril()
        scores = (qc @ kc.transpose(-2, -1)).masked_fill(~tril, 0.0)  # (B, H, nc, c, c)
        num = scores @ vc
        den = scores.sum(-1, keepdim=True)
        # State before each chunk: exclusive prefix sums over chunks.
        kv = F.pad(torch.cumsum(kc.transpose(-2, -1) @ vc, dim=2), (0, 0, 0, 0, 1, 0))[:, :, :-1]
        ks = F.pad(torch.cumsum(kc.sum(dim=3), dim=2), (0, 0, 1, 0))[:, :, :-1]
        num = num + qc @ kv
        den = den + qc @ ks.unsqueeze(-1)
        return (num / den).reshape(b, h, nc * c, -1)[:, :, :length]

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, nb_features={self.nb_features}, "
            f"kernel={self.kernel!r}, causal={self.causal}"
        )
