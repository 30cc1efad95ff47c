"""Low-precision training (notebook 10): FP8 with fine-grained scaling (``fp8``).
"""
