"""The SelectiveScan function body (standard ONNX ops) run alone by ONNX Runtime against the
float64 recurrence, from a zero and from a given initial state, at lengths around the chunk and
across groups of chunks."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from hvlm_export.artifacts import SCAN_DOMAIN, SCAN_INPUTS, SCAN_OP, SCAN_OUTPUTS, SCAN_PLUGIN_VERSION
from hvlm_export.exporters.scan_body import scan_function
from tests.references import scan_reference_f64

# fp32 body vs float64 recurrence: reassociated fp32 sums, a few 1e-7 relative; 1e-5 leaves
# headroom while a wrong carry or a lost initial state is O(1)
REL = 1e-5


def _model() -> onnx.ModelProto:
    f32 = TensorProto.FLOAT
    shapes = {"u": ["b", "d", "l"], "delta": ["b", "d", "l"], "A": ["d", "n"], "B": ["b", "n", "l"],
              "C": ["b", "n", "l"], "D": ["d"], "delta_bias": ["d"], "initial_state": ["b", "d", "n"]}
    node = helper.make_node(SCAN_OP, list(SCAN_INPUTS), list(SCAN_OUTPUTS), domain=SCAN_DOMAIN, delta_softplus=1,
                            plugin_namespace=SCAN_DOMAIN, plugin_version=SCAN_PLUGIN_VERSION)
    graph = helper.make_graph([node], "scan", [helper.make_tensor_value_info(n, f32, shapes[n]) for n in SCAN_INPUTS],
                              [helper.make_tensor_value_info("y", f32, ["b", "d", "l"]),
                               helper.make_tensor_value_info("last_state", f32, ["b", "d", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(SCAN_DOMAIN, 1)],
                              functions=[scan_function(20)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(_model().SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
# around the chunk (32 steps), and past one and several groups of 32 chunks (1024 steps): the
# carries' sequential pass inside a group and their scan across groups
@pytest.mark.parametrize("length", [1, 31, 32, 33, 100, 1024, 1025, 2100, 5000])
def test_body_matches_recurrence(session, length, with_state):
    g = torch.Generator().manual_seed(length)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    b, d, n = 2, 5, 4
    inp = dict(u=r(b, d, length), delta=r(b, d, length), A=-torch.rand(d, n, generator=g) * 3 - 0.1,
               B=r(b, n, length), C=r(b, n, length), D=r(d), delta_bias=r(d))
    h0 = r(b, d, n) if with_state else torch.zeros(b, d, n)
    want, want_state = scan_reference_f64(**inp, delta_softplus=True, initial_state=h0)
    y, state = session.run(None, {**{k: v.numpy() for k, v in inp.items()}, "initial_state": h0.numpy()})
    rel = np.abs(y - want.numpy()).max() / np.abs(want.numpy()).max()
    rel_state = np.abs(state - want_state.numpy()).max() / np.abs(want_state.numpy()).max()
    assert rel < REL and rel_state < REL, f"rel err y {rel:.3g}, state {rel_state:.3g}"


@pytest.mark.parametrize("length", [2100, 5000, 40000])
def test_body_carries_slow_decay_across_groups(session, length):
    """A state that decays slowly reaches many groups of 32 chunks later: every level of the
    carries' scan over groups shows (fast-decaying inputs forget within a group)."""
    g = torch.Generator().manual_seed(length)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    b, d, n = 1, 3, 2
    inp = dict(u=r(b, d, length), delta=r(b, d, length) * 0.1 - 6.0, A=-torch.rand(d, n, generator=g) * 1e-3 - 1e-4,
               B=r(b, n, length), C=r(b, n, length), D=r(d), delta_bias=torch.zeros(d))
    h0 = r(b, d, n) * 100
    want, want_state = scan_reference_f64(**inp, delta_softplus=True, initial_state=h0)
    y, state = session.run(None, {**{k: v.numpy() for k, v in inp.items()}, "initial_state": h0.numpy()})
    rel = np.abs(y - want.numpy()).max() / np.abs(want.numpy()).max()
    rel_state = np.abs(state - want_state.numpy()).max() / np.abs(want_state.numpy()).max()
    assert rel < REL and rel_state < REL, f"rel err y {rel:.3g}, state {rel_state:.3g}"



@pytest.mark.slow
def test_body_reaches_its_documented_length(session):
    """At L = SCAN_CHUNK * 2**CARRY_LEVELS (33.5M tokens) the initial state still reaches the
    last step: every level of the scan over groups is exercised. u = 0, so the exact answer
    has a closed form: y_t = C_t exp(A S_t) h0, S_t the running sum of softplus(delta)."""
    from hvlm_export.exporters.scan_body import CARRY_LEVELS
    from hvlm_export.ops.selective_scan import SCAN_CHUNK

    length = SCAN_CHUNK * 2**CARRY_LEVELS
    rng = np.random.default_rng(0)
    delta = rng.normal(0.0, 0.1, (1, 1, length)).astype(np.float32)
    a, h0 = np.array([[-1e-7]], np.float32), np.array([[[3.0]]], np.float32)
    c = np.ones((1, 1, length), np.float32)
    feeds = {"u": np.zeros((1, 1, length), np.float32), "delta": delta, "A": a, "B": c, "C": c,
             "D": np.zeros(1, np.float32), "delta_bias": np.zeros(1, np.float32), "initial_state": h0}
    y, state = session.run(None, feeds)
    s_end = np.log1p(np.exp(delta.astype(np.float64))).sum()
    want_end = 3.0 * np.exp(-1e-7 * s_end)
    assert abs(state[0, 0, 0] - want_end) / want_end < 1e-2 and abs(y[0, 0, -1] - want_end) / want_end < 1e-2
