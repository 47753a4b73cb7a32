"""Custom ops. Importing this package registers ``torch.ops.hvlm.*``."""

from hvlm_export.ops.selective_scan import (
    SCAN_CHUNK,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

__all__ = ["SCAN_CHUNK", "selective_scan", "selective_scan_chunked", "selective_scan_ref"]
