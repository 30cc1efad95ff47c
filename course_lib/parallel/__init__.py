"""Parallelism on torch.distributed (notebook 09): process groups and the launcher (``distributed``), expert
parallelism (the package ``expert_parallel``: placement, traffic, layer, step, workers, cli), pipeline schedules
and their simulator (the package ``pipeline``: GPipe, 1F1B, ZB1P, DualPipe, DualPipeV; issue 22), and the checks of
their boundaries (``arguments``; ``pipeline.arguments`` for the pipeline's).
"""
