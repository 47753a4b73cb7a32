"""Triton Python-backend model written by ``hvlm-export triton-repo --backend python``: serves
the ``model.onnx`` beside it through ``hvlm_export.runtime`` (ONNX Runtime; the same checks of
names, dtypes and shapes as ``hvlm-export run``), one request at a time.

Triton imports this file as ``<model>/<version>/model.py``; hvlm-export must be installed in
the Python environment of Triton's Python backend. Not imported by the package itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from hvlm_export import runtime

        directory = Path(args["model_repository"]) / str(args["model_version"])
        self.session = runtime.load(directory / "model.onnx")
        self.inputs = [spec.name for spec in self.session.inputs]
        self.outputs = [o["name"] for o in json.loads(args["model_config"])["output"]]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                feed = {}
                for name in self.inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is None:
                        raise ValueError(f"request has no input {name!r}")
                    feed[name] = tensor.as_numpy()
                out = self.session.run(feed)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, out[name]) for name in self.outputs]))
            except Exception as err:  # one bad request answers with its error, the others still run
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(err))))
        return responses

    def finalize(self) -> None:
        self.session = None
