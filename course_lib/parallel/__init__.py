"""Parallelism on torch.distributed (notebooks 09 and 12): process groups and the launcher (``distributed``), expert
parallelism (the package ``expert_parallel``: placement, traffic, layer, step, workers, cli), pipeline schedules,
their simulator and the tiny model pipelined over processes (the package ``pipeline``: GPipe, 1F1B, ZB1P,
DualPipe, DualPipeV; torch's schedules on gloo), and the checks of
their boundaries (``arguments``; ``pipeline.arguments`` for the pipeline's).
"""
