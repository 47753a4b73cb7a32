"""TensorRT engine session: the same ``run(dict) -> dict`` contract as the ONNX path.

Uses the TensorRT 10/11 runtime API (set_input_shape, set_tensor_address,
execute_async_v3 on a CUDA stream); device buffers are torch CUDA tensors. The engine's
``<engine>.json`` sidecar (hvlm_export.artifacts) says which plugins to register first
and which TensorRT built it; a mismatch is refused with a clear message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hvlm_export.artifacts import decode_metadata, read_engine_sidecar
from hvlm_export.errors import ArtifactError, RuntimeInputError
from hvlm_export.runtime.session import Session, TensorInfo

__all__ = ["EngineSession"]


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


class EngineSession(Session):
    """A deserialized TensorRT engine with one execution context; each run switches to the
    first optimization profile whose range holds the input shapes.

    Args:
        path: the engine file; ``<path>.json`` beside it is its metadata.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from hvlm_export.plugins.trt import import_tensorrt

        trt = import_tensorrt()
        import torch

        self._trt, self._torch = trt, torch
        self.path = Path(path)
        self.sidecar = read_engine_sidecar(self.path)
        self.metadata = decode_metadata(self.sidecar.get("onnx_metadata", {}))
        built_with = self.sidecar.get("tensorrt_version", "?")
        if _major_minor(built_with) != _major_minor(trt.__version__):
            raise ArtifactError(
                f"{self.path.name} was built with TensorRT {built_with}, this process has {trt.__version__}",
                "engines are not portable across TensorRT versions; rebuild it with `hvlm-export build`.",
            )
        if self.sidecar.get("plugins"):
            from hvlm_export.plugins import register_plugins

            register_plugins(trt)
        if not torch.cuda.is_available():
            raise ArtifactError("running a TensorRT engine needs a CUDA GPU, and torch sees none")
        logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"TensorRT cannot deserialize {self.path.name}", "the file is corrupt or truncated; rebuild it.")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = tuple(self._info(n) for n in names if is_input[n])
        self.outputs = tuple(self._info(n) for n in names if not is_input[n])
        self.profiles = [
            {t.name: self._engine.get_tensor_profile_shape(t.name, i) for t in self.inputs}
            for i in range(self._engine.num_optimization_profiles)
        ]
        self._active_profile = 0

    def _info(self, name: str) -> TensorInfo:
        shape = tuple(int(d) if d >= 0 else None for d in self._engine.get_tensor_shape(name))
        from hvlm_export.plugins.trt import numpy_dtype

        return TensorInfo(name, numpy_dtype(self._trt, self._engine.get_tensor_dtype(name)), shape)

    def _profile_for(self, feed: Mapping[str, np.ndarray]) -> int:
        """Index of the first profile whose min/max range holds every input's shape."""
        for index, profile in enumerate(self.profiles):
            if all(all(a <= s <= b for s, a, b in zip(feed[n].shape, lo, hi, strict=True))
                   for n, (lo, _, hi) in profile.items()):
                return index
        ranges = "; ".join(
            ", ".join(f"{n}: min {tuple(lo)} max {tuple(hi)}" for n, (lo, _, hi) in p.items()) for p in self.profiles
        )
        shapes = {n: a.shape for n, a in feed.items()}
        raise RuntimeInputError(
            f"input shapes {shapes} are outside the engine's profile(s): {ranges}",
            "rebuild the engine with --min-shapes/--max-shapes covering them.",
        )

    def _check(self, feed: Mapping[str, np.ndarray]) -> None:
        super()._check(feed)
        self._profile_for(feed)

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        stream = torch.cuda.Stream()
        keep = []
        profile = self._profile_for(feed)
        if profile != self._active_profile:
            self._context.set_optimization_profile_async(profile, stream.cuda_stream)
            self._active_profile = profile
        with torch.cuda.stream(stream):
            for info in self.inputs:
                array = np.ascontiguousarray(feed[info.name])
                tensor = torch.from_numpy(array.view(np.int16) if array.dtype.name == "bfloat16" else array).cuda()
                keep.append(tensor)
                self._context.set_input_shape(info.name, tuple(array.shape))
                self._context.set_tensor_address(info.name, tensor.data_ptr())
            outputs = {}
            for info in self.outputs:
                shape = tuple(self._context.get_tensor_shape(info.name))
                itemsize = info.dtype.itemsize
                buffer = torch.empty(int(np.prod(shape)) * itemsize, dtype=torch.uint8, device="cuda")
                outputs[info.name] = (buffer, shape)
                self._context.set_tensor_address(info.name, buffer.data_ptr())
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise ArtifactError(f"TensorRT failed to execute {self.path.name}")
        stream.synchronize()
        return {
            name: buffer.cpu().numpy().view(info.dtype).reshape(shape)
            for info, (name, (buffer, shape)) in zip(self.outputs, outputs.items(), strict=True)
        }
