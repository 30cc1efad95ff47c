"""Pipeline parallelism ([V3] 3.2.1, Table 2): the model cut into stages on a chain of ranks, a batch cut into
micro-batches that flow through it, and the schedules that keep the ranks busy.

- ``schedules``: the ordered operations of every rank for GPipe, 1F1B, ZB1P (zero bubble, ZeroBubble's ZB-H1),
  DualPipe and DualPipeV (``Schedule``, ``Op``, ``Overlapped``).
- ``simulator``: a timed run of a schedule under the dependencies and the costs F, B, W, F&B and a send time
  (``Costs``, ``simulate`` -> ``Timeline``: per-rank start and end times, bubbles, activations held).
- ``arguments``: the checks of their boundaries.
"""
