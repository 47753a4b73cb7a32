"""The selective scan of Mamba-1 as one op, ``hvlm::selective_scan``.

Glossary of dimension letters (Gu & Dao 2023, "Mamba", Algorithm 2):
    B  batch size
    D  channels (``d_inner`` of a Mamba block)
    L  sequence length
    N  state size (``d_state``)

Contract (the one of ``selective_scan_ref`` in state-spaces/mamba,
``mamba_ssm/ops/selective_scan_interface.py``):

    delta' = softplus(delta + delta_bias)       (bias and softplus optional)
    h_t    = exp(delta'_t * A) * h_{t-1} + delta'_t * B_t * u_t      h_{-1} = 0
    y_t    = <C_t, h_t> + D * u_t
    out    = y * silu(z)                         (gate optional)

computed in float32 and cast back to the dtype of ``u``; the final state h_{L-1} (B, D, N)
is float32.

Three kernels with the same contract:

* :func:`selective_scan_ref` - the sequential loop over L, obviously correct, for tests.
* :func:`selective_scan_chunked` - the differentiable eager path (the op's backward, devices
  without a kernel of their own): a sequential loop over a fixed chunk of ``SCAN_CHUNK``
  steps that runs all chunks at once, then a Hillis-Steele scan over the chunk carries. It
  reassociates the same recurrence, so it is exact up to float32 rounding, and every
  exponent it takes is <= 0 for A <= 0 (no overflow).
* on CPU the op runs the kernels of ``selective_scan_cpu``: a fused numba loop where numba
  is installed (the ``cpu`` extra), else the same chunked scan blocked over channels for the
  cache, with few passes over its temporaries.
* on CUDA the op runs the Triton scan of ``selective_scan_triton`` (parallel over L).

Every path takes an optional initial state h_{-1} (B, D, N), so a sequence can be scanned in
pieces (streaming: DESIGN.md section 7).

The ONNX function body of the ``hvlm::SelectiveScan`` node (hvlm_export.exporters.scan_body)
implements the same two-level algorithm with standard ONNX ops.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch
import torch.nn.functional as F

from hvlm_export.ops.triton_backed import direct_launch_ok

__all__ = [
    "SCAN_CHUNK",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_chunked",
    "check_scan_inputs",
]

#: Steps handled by the in-chunk sequential loop. 32 balances the Python-level loop (32
#: steps of small ops) against the carry scan (log2(L / 32) levels); see BENCHMARKS.md.
SCAN_CHUNK = 32

#: Upper bound on elements of one (B, D-block, L, N) float32 temporary in the chunked
#: kernel (2**25 floats = 128 MiB); larger problems are processed in channel blocks.
_MAX_BLOCK_ELEMENTS = 1 << 25


def check_scan_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None = None,
) -> None:
    """Raise ValueError if the shapes do not follow the contract in the module docstring."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (B, D, L), got shape {tuple(u.shape)}.")
    b, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (D={d}, N), got {tuple(A.shape)}.")
    n = A.shape[1]
    expected = {
        "delta": (delta, (b, d, length)),
        "B": (B, (b, n, length)),
        "C": (C, (b, n, length)),
        "D": (D, (d,)),
        "z": (z, (b, d, length)),
        "delta_bias": (delta_bias, (d,)),
        "initial_state": (initial_state, (b, d, n)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(
                f"selective_scan: {name} must have shape {shape}, got {tuple(tensor.shape)}."
            )
    for name, tensor in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not tensor.is_floating_point():
            raise TypeError(f"selective_scan: {name} must be a floating tensor, got {tensor.dtype}.")


def _discretize(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool
) -> torch.Tensor:
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _finish(
    y: torch.Tensor,
    u: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential reference: one step of the recurrence per position.

    Args:
        u: (B, D, L) input.
        delta: (B, D, L) time steps before bias / softplus.
        A: (D, N) state matrix (diagonal per channel).
        B: (B, N, L) input projection.
        C: (B, N, L) output projection.
        D: (D,) skip connection, optional.
        z: (B, D, L) gate, optional.
        delta_bias: (D,) added to delta before softplus, optional.
        delta_softplus: apply softplus to delta.
        initial_state: (B, D, N) state h_{-1} to continue from, optional (default zero).

    Returns:
        y (B, D, L) in the dtype of ``u`` and the final state (B, D, N) in float32.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dt = _discretize(delta, delta_bias, delta_softplus)
    uf, Af, Bf, Cf = u.float(), A.float(), B.float(), C.float()
    h = uf.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if initial_state is None else initial_state.float()
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * Af) * h + (dt[:, :, t] * uf[:, :, t])[..., None] * Bf[
            :, None, :, t
        ]
        ys.append((h * Cf[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(u.shape)
    return _finish(y, u, D, z, u.dtype), h


def _carry_scan(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Inclusive Hillis-Steele scan of x_c = a_c * x_{c-1} + b_c along ``dim`` (x_{-1} = 0)."""
    n = a.shape[dim]
    shift = 1
    while shift < n:
        a_prev = torch.cat([torch.ones_like(a.narrow(dim, 0, shift)), a.narrow(dim, 0, n - shift)], dim)
        b_prev = torch.cat([torch.zeros_like(b.narrow(dim, 0, shift)), b.narrow(dim, 0, n - shift)], dim)
        b = a * b_prev + b
        a = a * a_prev
        shift *= 2
    return b


def _chunked_block(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked scan of float32 inputs from state ``h0`` (B, D, N; default zero); returns y
    (B, D, L) without D/z and the final state.

    Within a chunk the decay from the chunk start to step t is exp(A * sum(delta[:t+1])),
    so only (B, D, L) and (B, D, L/T, N) tensors are ever materialised, never (B, D, L, N).
    """
    b, d, length = u.shape
    n = A.shape[1]
    nc = -(-length // chunk)
    pad = nc * chunk - length

    def steps(x: torch.Tensor) -> torch.Tensor:  # (b, k, L) -> (T, b, k, nc), contiguous per step
        return F.pad(x, (0, pad)).view(b, x.shape[1], nc, chunk).permute(3, 0, 1, 2).contiguous()

    # Padding steps have delta = 0 (decay 1) and delta * u = 0: they carry the state unchanged.
    dt_s, du_s = steps(dt), steps(dt * u)  # (T, B, D, nc)
    b_s = steps(B).transpose(2, 3).unsqueeze(2)  # (T, B, 1, nc, N)
    c_s = steps(C).transpose(2, 3).unsqueeze(2)
    a = A[None, :, None, :]  # (1, D, 1, N)
    h = u.new_zeros(b, d, nc, n)
    ys = []
    for t in range(chunk):  # all chunks at once, each from h = 0
        h = torch.exp(dt_s[t, ..., None] * a) * h + du_s[t, ..., None] * b_s[t]
        ys.append((h * c_s[t]).sum(-1))
    if nc > 1 or h0 is not None:
        cum = torch.cumsum(dt_s, dim=0)  # (T, B, D, nc): delta summed from the chunk start
        decay = torch.exp(cum[-1, ..., None] * a)  # (B, D, nc, N): decay over each whole chunk
        start = torch.zeros_like(h[:, :, 0]) if h0 is None else h0
        # the state entering chunk 0 decays through it: fold it into chunk 0's own end state
        h = torch.cat([h[:, :, :1] + decay[:, :, :1] * start[:, :, None], h[:, :, 1:]], dim=2)
        carry = _carry_scan(decay, h, dim=2)  # state at chunk ends
        carry_in = torch.cat([start[:, :, None], carry[:, :, :-1]], dim=2)
        ys = [y + (torch.exp(cum[t, ..., None] * a) * carry_in * c_s[t]).sum(-1) for t, y in enumerate(ys)]
        h = carry[:, :, -1]
    else:
        h = h[:, :, -1]
    y = torch.stack(ys, dim=-1).reshape(b, d, nc * chunk)
    return y[..., :length], h


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    chunk: int = SCAN_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast eager path with the signature of :func:`selective_scan_ref` (plus ``chunk``).

    Differentiable (plain torch ops); channels are processed in blocks so that one float32
    temporary stays under 128 MiB.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if chunk < 1:
        raise ValueError(f"selective_scan: chunk must be >= 1, got {chunk}.")
    dt = _discretize(delta, delta_bias, delta_softplus)
    uf, Af, Bf, Cf = u.float(), A.float(), B.float(), C.float()
    b, d, length = u.shape
    h0 = None if initial_state is None else initial_state.float()
    if length == 0:
        return _finish(uf, u, D, z, u.dtype), uf.new_zeros(b, d, A.shape[1]) if h0 is None else h0
    chunk = min(chunk, length)  # a short piece (a streamed token) needs no padding to a full chunk
    per_channel = max(1, b * length * A.shape[1])
    block = max(1, _MAX_BLOCK_ELEMENTS // per_channel)
    ys, states = [], []
    for start in range(0, d, block):
        sl = slice(start, start + block)
        y, state = _chunked_block(uf[:, sl], dt[:, sl], Af[sl], Bf, Cf, chunk, None if h0 is None else h0[:, sl])
        ys.append(y)
        states.append(state)
    return _finish(torch.cat(ys, 1), u, D, z, u.dtype), torch.cat(states, 1)


# --- the op -------------------------------------------------------------------------------


@torch.library.custom_op("hvlm::selective_scan", mutates_args=())
def _selective_scan_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor,
    delta_softplus: bool,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    y, state = selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    return y, state


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state=None):
    return torch.empty_like(u), u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)


_TENSOR_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _setup_context(ctx, inputs, output):
    tensors = dict(zip(_TENSOR_ARGS, (*inputs[:8], inputs[9] if len(inputs) > 9 else None), strict=True))
    ctx.present = [name for name, t in tensors.items() if t is not None]
    ctx.save_for_backward(*(tensors[name] for name in ctx.present))
    ctx.delta_softplus = inputs[8]


def _backward(ctx, grad_y, grad_state):
    with torch.enable_grad():
        leaves = {name: t.detach().requires_grad_(True) for name, t in zip(ctx.present, ctx.saved_tensors, strict=True)}
        y, state = selective_scan_chunked(**leaves, delta_softplus=ctx.delta_softplus)
        grads = dict(zip(leaves, torch.autograd.grad((y, state), list(leaves.values()), (grad_y, grad_state),
                                                     allow_unused=True), strict=True))
    ordered = [grads.get(name) for name in _TENSOR_ARGS]
    return (*ordered[:8], None, ordered[8])  # delta_softplus gets no gradient


_selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


@_selective_scan_op.register_kernel("cpu")
def _selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state=None):
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if u.numel() == 0 or A.shape[1] == 0:  # clones: an op's output must not alias an input (L = 0)
        y, state = selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
        return y.clone(), state.clone()
    # imports this module, so not at its top
    from hvlm_export.ops.selective_scan_cpu import selective_scan_blocked, selective_scan_fused

    dt = _discretize(delta, delta_bias, delta_softplus)
    h0 = None if initial_state is None else initial_state.float()
    fused = selective_scan_fused(u, dt, A, B, C, D, z, h0)  # None without numba
    if fused is not None:
        return fused[0].to(u.dtype), fused[1]
    y, state = selective_scan_blocked(u.float(), dt, A.float(), B.float(), C.float(), h0)
    return _finish(y, u, D, z, u.dtype), state


def _records_graph(args: tuple) -> bool:  # grad mode on and a tensor argument needing grad
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in args)


@functools.cache
def _triton_scan():
    """The Triton launcher, or None (with one warning) where Triton is not installed."""
    try:
        from hvlm_export.ops.selective_scan_triton import selective_scan_triton
    except ImportError as err:
        warnings.warn(
            f"Triton is not importable ({err}); CUDA tensors use the chunked PyTorch scan instead of the "
            "Triton kernel (same numbers, slower). Install triton to get the fast kernel.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return selective_scan_triton


@_selective_scan_op.register_kernel("cuda")
def _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state=None):
    kernel = _triton_scan()
    if kernel is None:
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    impl: Literal["op", "reference"] = "op",
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run the selective scan (contract in the module docstring).

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state: see
            :func:`selective_scan_ref`.
        return_last_state: also return the final state (B, D, N), float32.
        impl: ``"op"`` runs ``torch.ops.hvlm.selective_scan`` (the fast kernel of the device;
            one node under torch.export / ONNX export; eager CUDA inference launches it
            directly, skipping the op's dispatch); ``"reference"`` the sequential loop.

    Returns:
        y (B, D, L), or (y, last_state) if ``return_last_state``.
    """
    if impl == "op":
        check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
        d = u.shape[1]
        D_ = D if D is not None else u.new_zeros(d, dtype=torch.float32)
        bias = delta_bias if delta_bias is not None else u.new_zeros(d, dtype=torch.float32)
        args = (u, delta, A, B, C, D_, z, bias, delta_softplus, initial_state)
        kernel = _triton_scan() if u.is_cuda and direct_launch_ok() and not _records_graph(args) else None
        y, state = kernel(*args) if kernel is not None else torch.ops.hvlm.selective_scan(*args)
    elif impl == "reference":
        y, state = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    else:
        raise ValueError(f"selective_scan: unknown impl {impl!r}.\nNote: valid choices are 'op', 'reference'.")
    return (y, state) if return_last_state else y
