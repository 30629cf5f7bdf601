"""Placement: where a viewer, a publisher or a pull goes, as pure functions over registry records.

No I/O and no clock: the control plane (control.app), the edges' parent-tier choice (edge.upstream) and
the cluster simulation (loadtest.simulate) all run this same code, which is why it sits below them.
"""
