"""Parallelism on torch.distributed (notebook 09): process groups and the launcher (``distributed``), expert
parallelism (``expert_parallel``).
"""
