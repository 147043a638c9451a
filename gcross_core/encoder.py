"""SpUNet point encoder on spconv. This is the only module of gcross_core that imports spconv."""
from __future__ import annotations

import torch


def _import_spconv():
    """Import spconv.pytorch, making its backward usable on CPU-only torch.

    spconv's conv backward asks ``torch.cuda.current_stream()`` for a stream handle even when every
    tensor is on the CPU, which raises 'Torch not compiled with CUDA enabled' on CPU-only torch. The CPU
    kernels ignore the stream, so on machines without CUDA the lookup is replaced by the null stream (0).
    This is the one place in the project that works around it.
    """
    import spconv.pytorch as spconv_pt

    if not torch.cuda.is_available():
        from spconv.pytorch import cppcore, hash as sp_hash, ops

        def _null_stream() -> int:
            return 0

        for module in (cppcore, ops, sp_hash):
            module.get_current_stream = _null_stream
    return spconv_pt


spconv = _import_spconv()
