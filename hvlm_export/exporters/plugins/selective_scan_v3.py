"""SelectiveScan as IPluginV3 Python classes, for TensorRT 10.0 - 10.5 (no tensorrt.plugin).

Shape/dtype/attribute decisions are delegated to ``selective_scan_logic``; ``enqueue`` runs
the hvlm scan op (Triton on CUDA) on views of TensorRT's buffers.
"""

from __future__ import annotations

import numpy as np
import tensorrt as trt

from hvlm_export.exporters.plugins import selective_scan_logic as logic
from hvlm_export.exporters.plugins.kernel import device_tensor, run_scan

__all__ = ["SelectiveScanPlugin", "SelectiveScanCreator", "register"]

_NAMES = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}


def _name(dtype) -> str:
    return _NAMES.get(dtype, str(dtype))


class SelectiveScanPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
    def __init__(self, attrs: logic.ScanAttrs, phase=None) -> None:
        trt.IPluginV3.__init__(self)
        trt.IPluginV3OneCore.__init__(self)
        trt.IPluginV3OneBuild.__init__(self)
        trt.IPluginV3OneRuntime.__init__(self)
        self.attrs = attrs
        self.phase = phase
        self.num_outputs = 2
        self.plugin_namespace = logic.PLUGIN_NAMESPACE
        self.plugin_name = logic.PLUGIN_NAME
        self.plugin_version = logic.PLUGIN_VERSION
        self.timing_cache_id = ""

    def get_capability_interface(self, type):
        return self

    def get_output_data_types(self, input_types):
        logic.output_dtypes([_name(t) for t in input_types])
        return [input_types[0], trt.float32]

    def get_output_shapes(self, inputs, shape_inputs, expr_builder):
        logic.check_input_shapes([[d.get_constant_value() if d.is_constant() else "?" for d in x] for x in inputs])
        y = trt.DimsExprs(inputs[0])
        state = trt.DimsExprs(inputs[0])
        state[2] = inputs[2][1]
        return [y, state]

    def get_fields_to_serialize(self):
        value = np.array([int(self.attrs.delta_softplus)], dtype=np.int32)
        return trt.PluginFieldCollection([trt.PluginField("delta_softplus", value, trt.PluginFieldType.INT32)])

    def configure_plugin(self, inp, out):
        pass

    def on_shape_change(self, inp, out):
        pass

    def supports_format_combination(self, pos, in_out, num_inputs):
        if in_out[pos].desc.format != trt.TensorFormat.LINEAR:
            return False
        return logic.supports_position([_name(io.desc.type) for io in in_out[: pos + 1]])

    def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
        ins = [device_tensor(p, tuple(d.dims), _name(d.type)) for p, d in zip(inputs, input_desc, strict=True)]
        outs = [device_tensor(p, tuple(d.dims), _name(d.type)) for p, d in zip(outputs, output_desc, strict=True)]
        run_scan(ins, outs, self.attrs.delta_softplus, stream)

    def attach_to_context(self, context):
        return self.clone()

    def get_valid_tactics(self):
        return []

    def set_tactic(self, tactic):
        pass

    def clone(self):
        return SelectiveScanPlugin(self.attrs, self.phase)


class SelectiveScanCreator(trt.IPluginCreatorV3One):
    def __init__(self) -> None:
        trt.IPluginCreatorV3One.__init__(self)
        self.name = logic.PLUGIN_NAME
        self.plugin_namespace = logic.PLUGIN_NAMESPACE
        self.plugin_version = logic.PLUGIN_VERSION
        self.field_names = trt.PluginFieldCollection(
            [trt.PluginField("delta_softplus", np.array([0], dtype=np.int32), trt.PluginFieldType.INT32)]
        )

    def create_plugin(self, name, fc, phase):
        attrs = logic.ScanAttrs.from_fields({f.name: f.data for f in fc})
        return SelectiveScanPlugin(attrs, phase)


def register(trt_module=trt) -> None:
    trt_module.get_plugin_registry().register_creator(SelectiveScanCreator(), logic.PLUGIN_NAMESPACE)
