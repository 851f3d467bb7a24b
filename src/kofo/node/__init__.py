"""The KOFO node: composes the settlement, clearance and exchange layers into one daemon.

Layers never import this package; it imports their public faces and ``kofo.wire``.
"""
