"""Pipeline parallelism ([V3] 3.2.1, Table 2): the model cut into stages on a chain of ranks, a batch cut into
micro-batches that flow through it, and the schedules that keep the ranks busy.

- ``schedules``: the ordered operations of every rank for GPipe, 1F1B, ZB1P (zero bubble, ZeroBubble's ZB-H1),
  DualPipe and DualPipeV (``Schedule``, ``Op``, ``Overlapped``).
- ``simulator``: a timed run of a schedule under the dependencies and the costs F, B, W, F&B and a send time
  (``Costs``, ``simulate`` -> ``Timeline``: per-rank start and end times, bubbles, activations held).
- ``plots``: a timed run drawn as a Gantt chart (``gantt``), DualPipe's overlapped pair (``overlap_pair_diagram``).
- ``stages``: the tiny model cut into stages (``StageModule``), the loss of a micro-batch, the one-process step.
- ``run``: one step of the tiny model pipelined over gloo processes with torch.distributed.pipelining's
  Schedule1F1B, ScheduleInterleavedZeroBubble or ScheduleDualPipeV (``run_pipeline``), against one process.
- ``torch_orders``: torch's per-rank ``pipeline_order`` written as ours, to compare the two.
- ``arguments``: the checks of their boundaries.
"""
