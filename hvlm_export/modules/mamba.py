"""MambaLayer: the Mamba-1 block (Gu & Dao 2023, arXiv 2312.00752, section 3.4 / Algorithm 2).

Glossary: B batch, L length, E model width (``dim``), Di = expand * E (``d_inner``),
N state size, R dt rank, K conv kernel.

Parameter-for-parameter compatible with ``Mamba`` of state-spaces/mamba
(``mamba_ssm/modules/mamba_simple.py``): same sub-module names, shapes and initialisation,
so its state_dict loads with ``strict=True``. The forward pass is that block's reference
(non-fused) path:

    x, z = in_proj(u).chunk(2)               (B, Di, L) each
    x    = silu(causal depthwise conv1d(x))
    dt, B, C = x_proj(x).split([R, N, N])
    y    = selective_scan(x, dt_proj.weight @ dt, A=-exp(A_log), B, C, D, z,
                          delta_bias=dt_proj.bias, delta_softplus=True)
    out  = out_proj(y)

The scan is ``torch.ops.hvlm.selective_scan`` (one node under export) or, with
``scan_impl='reference'``, the sequential loop.

CUDA inference (no autograd, not under export) takes a fused path with the same numbers,
channel-first as mamba-ssm's: every projection one GEMM writing (B, rows, L) memory (the
scan kernel's fast layout), the conv + SiLU as one kernel (``torch.ops.hvlm.causal_conv1d_silu``)
in that layout, and the scan reading x, z, delta, B and C in place; training, export and
other devices run the path above.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hvlm_export.modules._attention import (
    check_mask,
    check_positive_int,
    check_sequence,
    fused_cuda_inference,
    zero_padding,
)
from hvlm_export.modules._derived import Derived
from hvlm_export.modules._streaming import StateSpec, Streamable
from hvlm_export.ops.selective_scan import selective_scan
from hvlm_export.ops.causal_conv import conv_silu

__all__ = ["MambaLayer"]

ScanImpl = Literal["op", "reference"]

#: the fused CUDA path pads L to a multiple of this many steps (``MambaLayer._fused_forward``)
ROW_ALIGN = 16


def _scan_params(a_log: torch.Tensor, d: torch.Tensor, delta_bias: torch.Tensor):
    """The scan's float32 parameters from the layer's: A = -exp(A_log), D, delta_bias."""
    return -torch.exp(a_log.float()), d.float(), delta_bias.float()


def _project(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """weight (out, in) applied to the channels of a channel-first x (B, in, L): one batched
    GEMM into contiguous (B, out, L) memory (``torch.matmul`` may return a transposed view
    instead: on torch 2.11 on the GPU it did, and the scan then had to copy its inputs)."""
    out = torch.bmm(weight.expand(x.shape[0], -1, -1), x)
    return out if bias is None else out + bias[:, None]


class MambaLayer(Streamable):
    """Mamba-1 selective state-space block (see module docstring).

    ``A_log`` stays float32 under :func:`hvlm_export.modules.cast_module` (``_keep_fp32``).

    Args:
        dim: model width E (default 768).
        state_size: N (default 16).
        conv_kernel: K of the causal depthwise conv (default 4).
        expand: Di = expand * E (default 2).
        dt_rank: R, or 'auto' for ceil(E / 16) (default 'auto').
        dt_min, dt_max: range of the log-uniform initial time step (defaults 1e-3, 1e-1).
        dt_init: 'random' or 'constant' initialisation of dt_proj.weight (default 'random').
        dt_scale: scale of that initialisation (default 1.0).
        dt_init_floor: lower clamp of the initial time step (default 1e-4).
        conv_bias: bias in the conv (default True).
        bias: bias in in_proj / out_proj (default False).
        scan_impl: 'op' (fast kernel, one node when exported) or 'reference' (default 'op').
    """

    _keep_fp32 = ("A_log",)

    def __init__(
        self,
        dim: int = 768,
        state_size: int = 16,
        conv_kernel: int = 4,
        expand: int = 2,
        dt_rank: int | Literal["auto"] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: Literal["random", "constant"] = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_impl: ScanImpl = "op",
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.state_size = check_positive_int("state_size", state_size)
        self.conv_kernel = check_positive_int("conv_kernel", conv_kernel)
        self.expand = check_positive_int("expand", expand)
        self.d_inner = expand * dim
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else check_positive_int("dt_rank", dt_rank)
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Unknown dt_init {dt_init!r}.\nNote: valid choices are 'random', 'constant'.")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}.")
        if scan_impl not in ("op", "reference"):
            raise ValueError(f"Unknown scan_impl {scan_impl!r}.\nNote: valid choices are 'op', 'reference'.")
        self.scan_impl = scan_impl
        dd = {"device": device, "dtype": dtype}
        di, n, r = self.d_inner, state_size, self.dt_rank

        self.in_proj = nn.Linear(dim, 2 * di, bias=bias, **dd)
        self.conv1d = nn.Conv1d(di, di, conv_kernel, groups=di, padding=conv_kernel - 1, bias=conv_bias, **dd)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False, **dd)
        self.dt_proj = nn.Linear(r, di, bias=True, **dd)
        self.out_proj = nn.Linear(di, dim, bias=bias, **dd)

        # dt_proj: weight keeps the variance at init, bias is softplus^-1 of a log-uniform dt.
        std = r**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            dt = torch.exp(torch.rand(di, **dd) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

        # S4D-Real initialisation: A[d, n] = -(n + 1); kept in float32 like the reference.
        a = torch.arange(1, n + 1, dtype=torch.float32, device=device).repeat(di, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(di, device=device))
        self.D._no_weight_decay = True

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, E), attention_mask: (B, L) or None -> (B, L, E).

        attention_mask: 1 = real token, right padding. The layer is causal, so padding after
        the real tokens never reaches them; padded positions output 0."""
        check_sequence(x, self.dim)
        mask = None if attention_mask is None else check_mask(attention_mask, x)
        if self._fused(x):
            return zero_padding(self._fused_forward(x), mask)
        length = x.shape[1]
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2 Di, L)
        xs, z = xz.chunk(2, dim=1)
        xs = self.act(self.conv1d(xs)[..., :length])  # causal: keep the first L outputs
        return zero_padding(self._ssm(xs, z, None)[0], mask)

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether this call takes the fused CUDA path: the fast scan, and inference that a
        Triton kernel may serve (``fused_cuda_inference``)."""
        return self.scan_impl == "op" and fused_cuda_inference(x, self.in_proj.weight)

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """CUDA inference, channel-first (as mamba-ssm): each projection is one GEMM writing
        (B, rows, L) memory, the scan kernel's fast layout (L-contiguous rows); conv + SiLU is
        one kernel that keeps that layout. Rows are padded to a multiple of 16 steps (x padded
        with zeros after its last token; every step is causal, so the first L outputs are
        those of the unpadded input): the kernels' vector loads and cuBLAS's fast paths need
        16-element aligned rows (H200, fp16, dim 768: 0.94 ms at L = 8001 unpadded, 0.32 ms
        padded, 0.28 ms at 8192; docs/BENCHMARKS.md). The output projection runs over every
        step and is then cut to L (a GEMM over an odd row count is slow)."""
        length = x.shape[1]
        if length % ROW_ALIGN:
            x = F.pad(x, (0, 0, 0, ROW_ALIGN - length % ROW_ALIGN))
        xz = _project(self.in_proj.weight, x.transpose(1, 2), self.in_proj.bias)  # (B, 2 Di, L)
        xs, z = xz.chunk(2, dim=1)
        xs = conv_silu(xs.transpose(1, 2), self.conv1d.weight, self.conv1d.bias)
        xs = xs.transpose(1, 2)  # (B, Di, L), L-contiguous
        x_dbl = _project(self.x_proj.weight, xs, self.x_proj.bias)  # (B, R + 2N, L)
        dt, b_in, c_in = torch.split(x_dbl, [self.dt_rank, self.state_size, self.state_size], dim=1)
        out = self._scan_out(xs, _project(self.dt_proj.weight, dt), b_in, c_in, z, None)[0]
        return out if out.shape[1] == length else out[:, :length].contiguous()

    def _ssm(self, xs: torch.Tensor, z: torch.Tensor, h0: torch.Tensor | None):
        """The selective SSM and output projection of the conv output xs (B, Di, L) and gate z,
        from SSM state h0 (B, Di, N) or zero; returns (y (B, L, E), last state or None)."""
        x_dbl = self.x_proj(xs.transpose(1, 2))  # (B, L, R + 2N)
        dt, b_in, c_in = torch.split(x_dbl, [self.dt_rank, self.state_size, self.state_size], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, Di, L), bias added in the scan
        return self._scan_out(xs, delta, b_in.transpose(1, 2), c_in.transpose(1, 2), z, h0)

    def _scan_out(self, xs, delta, b_in, c_in, z, h0):
        """The scan of xs (B, Di, L) with delta (B, Di, L), B / C (B, N, L) and gate z (delta_bias
        and softplus inside), then the output projection: (y (B, L, E), last state or None)."""
        # kept while the parameters are unchanged (a launch each, in host-bound calls); computed in
        # the call under autograd and tracing (Derived)
        if getattr(self, "_kept_params", None) is None:  # None in layers pickled before it existed
            self._kept_params = Derived(_scan_params)
        a, d, delta_bias = self._kept_params(self.A_log, self.D, self.dt_proj.bias)
        y, last = selective_scan(
            xs,
            delta,
            a,
            b_in,
            c_in,
            D=d,
            z=z,
            delta_bias=delta_bias,
            delta_softplus=True,
            return_last_state=True,
            impl=self.scan_impl,
            initial_state=h0,
        )
        return self.out_proj(y.transpose(1, 2)), (None if h0 is None else last)

    def state_specs(self) -> list[StateSpec]:
        """The last K - 1 conv inputs and the SSM state h (float32): a fixed size."""
        return [StateSpec("conv", ("batch", self.d_inner, self.conv_kernel - 1), "model"),
                StateSpec("ssm", ("batch", self.d_inner, self.state_size), "float32")]

    def _step(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The next T tokens: the conv over [cached K - 1 inputs, new inputs] (no padding),
        then the scan from the cached SSM state."""
        t = x.shape[1]
        xs, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B, Di, T) each
        window = torch.cat([state["conv"], xs.to(state["conv"].dtype)], dim=-1)  # (B, Di, K - 1 + T)
        conv = F.conv1d(window.to(xs.dtype), self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)
        y, ssm = self._ssm(self.act(conv), z, state["ssm"])
        # contiguous copies: a view would keep the whole (B, Di, K - 1 + T) window alive
        return y, {"conv": window[..., t:].contiguous(), "ssm": ssm.contiguous()}

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, state_size={self.state_size}, d_inner={self.d_inner}, "
            f"dt_rank={self.dt_rank}, conv_kernel={self.conv_kernel}, scan_impl={self.scan_impl!r}"
        )
