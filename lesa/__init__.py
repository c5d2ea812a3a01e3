"""lesa: Locally Enhanced Self-Attention as a torch layer library (pure torch, plus one optional
C++ kernel for CPU inference that falls back to torch ops where it cannot be built).

    from lesa import LESA2d, FUSIONS, build_backbone, shares

Read in this order: unary.py (local term), binary.py (context term) and window.py (its local
variant), fusion.py (strategies), block.py (LESA2d and the share report), backbone.py (ResNets);
the released code's choices as options: logit_norm.py (logit BatchNorm), raster.py (raster
q/k/v embeddings), deformable.py (deformable 3x3).
How each device computes the attention sits apart in kernels/ (SDPA operands, the chunked CPU
path, the fused CPU kernel); layout.py keeps a block's 1x1 convolutions as GEMMs in CPU training.
"""
from __future__ import annotations

import importlib

# Loaded on first use, so that `lesa.names` (the did-you-mean helper the bench's config uses)
# imports without torch.
_EXPORTS = {"ARCHS": "backbone", "ResNet": "backbone", "build_backbone": "backbone",
            "BinaryTerm": "binary", "RelativePosition2d": "binary",
            "LESA2d": "block", "record_shares": "block", "reset_shares": "block",
            "shares": "block", "capture_share_maps": "block", "share_maps": "block",
            "attention_geometry": "block", "record_gates": "block", "gate_records": "block",
            "reference_paths": "block", "attention_modules": "block",
            "FUSIONS": "fusion", "Fusion": "fusion", "AttentionFusion": "fusion",
            "register": "fusion", "Arch": "backbone", "register_backbone": "backbone",
            "UnaryTerm": "unary", "fused_cpu": "kernels.fused_cpu",
            "RasterPosition": "raster", "LogitNorm": "logit_norm",
            "DeformableConv3x3": "deformable", "RELEASE": "backbone"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:  # a submodule, e.g. lesa.kernels.fused_cpu.status()
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'lesa' has no attribute {name!r}") from None
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    value = module if module.__name__.endswith(f".{name}") else getattr(module, name)
    globals()[name] = value
    return value
