"""lesa: Locally Enhanced Self-Attention as a torch layer library (pure torch, plus one optional
C++ kernel for CPU inference that falls back to torch ops where it cannot be built).

    from lesa import LESA2d, FUSIONS, build_backbone, shares

Read in this order: layout.py (memory layout: a block's 1x1 convolutions as GEMMs in CPU
training), unary.py (local term), binary.py (context term), chunked.py (its CPU path) and
fused_cpu.py (+ fused_attention.cpp: the same in CPU inference, one kernel), fusion.py
(strategies), block.py (LESA2d and the share report), backbone.py (ResNets).
"""
from .backbone import ARCHS, ResNet, build_backbone
from .binary import BinaryTerm, RelativePosition2d
from .block import LESA2d, record_shares, reset_shares, shares
from .fusion import FUSIONS, Fusion, register
from .unary import UnaryTerm

__all__ = ["ARCHS", "FUSIONS", "BinaryTerm", "Fusion", "LESA2d", "RelativePosition2d", "ResNet",
           "UnaryTerm", "build_backbone", "record_shares", "register", "reset_shares", "shares"]
