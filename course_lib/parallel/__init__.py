"""Parallelism on torch.distributed (notebook 09): process groups and the launcher (``distributed``), expert
parallelism (the package ``expert_parallel``: placement, traffic, layer, step, workers, cli), and the checks of
their boundaries (``arguments``).
"""
