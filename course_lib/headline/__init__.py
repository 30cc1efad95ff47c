"""DeepSeek-V3's headline numbers (notebook 00): the facts the course cites with their sources (``facts``), training
compute and GPU utilisation (``compute``), parameter counts (``param_count``).
"""
