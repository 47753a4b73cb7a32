"""Custom ops. Importing this package registers ``torch.ops.hvlm.*``."""

from hvlm_export.ops import causal_conv  # noqa: F401  (registers hvlm::causal_conv1d_silu)

from hvlm_export.ops.selective_scan import (
    SCAN_CHUNK,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

__all__ = ["SCAN_CHUNK", "selective_scan", "selective_scan_chunked", "selective_scan_ref"]
