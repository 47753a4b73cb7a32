"""A real Triton server on 127.0.0.1 (nvidia-pytriton's tritonserver): queried over HTTP and
gRPC by concurrent clients with mixed lengths, every answer checked against the runtime; the
server stops cleanly (no stray process, no /dev/shm file) from the API and from SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hvlm_export import runtime
from hvlm_export.errors import ServingError

pytest.importorskip("pytriton", reason="nvidia-pytriton (extra 'serve') runs the server")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

ROOT = Path(__file__).resolve().parents[2]


def _tritonservers(http_port: int) -> int:
    """tritonserver processes listening on this HTTP port (other tests may run servers too)."""
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return sum("tritonserver" in line and str(http_port) in line.replace("=", " ").split() for line in out.splitlines())


def _shm() -> set[str]:
    """This process's pytriton shared-memory files (pytriton names them after the pid)."""
    mine = f"pytrtion{os.getpid()}"
    return {f for f in os.listdir("/dev/shm") if f.startswith(mine)} if os.path.isdir("/dev/shm") else set()


@contextlib.contextmanager
def _serving(path, name: str, **options):
    """A server for ``path`` in a thread, stopped and checked (no process, no /dev/shm file) on exit."""
    from hvlm_export.serving.server import serve

    stop, ready, errors = threading.Event(), threading.Event(), []
    info: list = []
    shm_before = _shm()

    def run():
        try:
            serve(path, name=name, http_port=0, grpc_port=0, metrics_port=0, stop=stop,
                  on_ready=lambda i: (info.append(i), ready.set()), **options)
        except BaseException as err:  # reported by the fixture
            errors.append(err)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(120), "server did not start within 120 s"
        assert not errors, errors
        yield path, info[0]
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "server did not stop within 60 s"
    assert info and _tritonservers(info[0].http_port) == 0
    assert _shm() <= shm_before, f"left in /dev/shm: {_shm() - shm_before}"


@pytest.fixture
def server(exported):
    with _serving(exported("mamba"), "mamba") as running:
        yield running


@pytest.fixture
def masked_server(exported):
    """A model with padding masks: requests of different lengths share padded batches."""
    with _serving(exported("local_global", with_mask=True), "mamba", max_queue_delay_us=20000) as running:
        yield running


def _infer(client_module, url, x):
    """One request through a fresh tritonclient (HTTP or gRPC module) for model 'mamba'."""
    client = client_module.InferenceServerClient(url)
    try:
        inp = client_module.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer("mamba", [inp]).as_numpy("y")
    finally:
        client.close()


def _http(url, x):
    return _infer(httpclient, url, x)


def _grpc(url, x):
    return _infer(grpcclient, url, x)


def test_http_and_grpc_answers_match_the_runtime(server):
    path, info = server
    session = runtime.load(path)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 2, (5, 7, 5, 16)[i % 4], 64), dtype=np.float32) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda ix: (_http if ix[0] % 2 else _grpc)(
            info.http_url if ix[0] % 2 else info.grpc_url, ix[1]), enumerate(inputs)))
    for x, y in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(y, session.run({"x": x})["y"], rtol=1e-5, atol=1e-6)
    assert httpclient.InferenceServerClient(info.http_url).is_server_ready()


def test_requests_of_different_lengths_share_padded_batches(masked_server):
    """x alone from the clients; Triton joins requests of different lengths (ragged inputs),
    the server pads them into one batch with the mask, and every answer is the model's output
    for that request alone."""
    path, info = masked_server
    session = runtime.load(path)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1 + (i % 5 == 0), int(rng.integers(3, 70)), 64), dtype=np.float32)
              for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda ix: (_http if ix[0] % 2 else _grpc)(
            info.http_url if ix[0] % 2 else info.grpc_url, ix[1]), enumerate(inputs)))
    for x, y in zip(inputs, answers, strict=True):
        alone = session.run({"x": x, "attention_mask": np.ones(x.shape[:2], np.int64)})["y"]
        assert y.shape == x.shape
        np.testing.assert_allclose(y, alone, rtol=1e-4, atol=1e-5)
    requests, runs, rows = info.stats.snapshot()
    assert requests == len(inputs) and rows == sum(len(x) for x in inputs)
    assert runs < requests, "no two requests were ever batched together"
    config = httpclient.InferenceServerClient(info.http_url).get_model_config("mamba")
    assert [i["name"] for i in config["input"] if i.get("allow_ragged_batch")] == [
        "x", "attention_mask"], "Triton would join equal shapes only"
    assert [i["name"] for i in config["input"] if i.get("optional")] == ["attention_mask"]


def test_bad_request_is_an_error_answer(server):
    _, info = server
    with pytest.raises(Exception, match="(?i)x|shape|dim"):
        _http(info.http_url, np.zeros((1, 5, 63), np.float32))  # wrong width: refused, server keeps serving
    assert _http(info.http_url, np.zeros((1, 3, 64), np.float32)).shape == (1, 3, 64)


def test_bad_options(exported):
    from hvlm_export.serving.server import serve

    with pytest.raises(ServingError, match="max-batch-size"):
        serve(exported("mamba"), max_batch_size=0)
    with pytest.raises(ServingError, match="fixed batch axis"):
        serve(exported("mamba", dynamic=False), http_port=0, grpc_port=0, metrics_port=0)


def test_cli_serves_until_sigterm(exported, tmp_path):
    path = exported("mamba")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "serve.log"  # a file, not a pipe: the server's children must not hold our reads open
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hvlm_export.cli", "serve", str(path), "--name", "mamba",
                                 "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"], stdout=out,
                                stderr=subprocess.DEVNULL, env=env, cwd=ROOT, start_new_session=True)
    port = None
    try:
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            ready = [line for line in log.read_text().splitlines() if line.startswith("serving")]
            port = int(ready[0].split("HTTP 127.0.0.1:")[1].split(",")[0]) if ready else None
            time.sleep(0.2)
        assert port is not None, log.read_text()[-2000:]
        assert _tritonservers(port) == 1
        assert _http(f"127.0.0.1:{port}", np.ones((1, 4, 64), np.float32)).shape == (1, 4, 64)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert log.read_text().rstrip().endswith("stopped")
    finally:
        if proc.poll() is None:  # the test failed: take the whole process group down
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _tritonservers(port) == 0


def test_ragged_inputs_are_patched_in_and_out(monkeypatch):
    """The allow_ragged_batch patch of pytriton's config generator is undone on exit, and a
    pytriton without the method it wraps leaves configs alone (equal-shape batching)."""
    from pytriton.model_config import generator

    from hvlm_export.serving.server import _ragged

    original = generator.ModelConfigGenerator._set_model_signature
    with _ragged({"x"}) as patched:
        assert patched and generator.ModelConfigGenerator._set_model_signature is not original
    assert generator.ModelConfigGenerator._set_model_signature is original
    monkeypatch.delattr(generator.ModelConfigGenerator, "_set_model_signature")
    with _ragged({"x"}) as patched:
        assert not patched
