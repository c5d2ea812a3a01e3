"""lesa: Locally Enhanced Self-Attention as a pure-torch layer library.

    from lesa import LESA2d, FUSIONS, build_backbone, shares

Read in this order: unary.py (local term), binary.py (context term) and chunked.py (its CPU
path), fusion.py (strategies), block.py (LESA2d and the share report), backbone.py (ResNets).
"""
from .backbone import ARCHS, ResNet, build_backbone
from .binary import BinaryTerm, RelativePosition2d
from .block import LESA2d, record_shares, reset_shares, shares
from .fusion import FUSIONS, Fusion, register
from .unary import UnaryTerm

__all__ = ["ARCHS", "FUSIONS", "BinaryTerm", "Fusion", "LESA2d", "RelativePosition2d", "ResNet",
           "UnaryTerm", "build_backbone", "record_shares", "register", "reset_shares", "shares"]
