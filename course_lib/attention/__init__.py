"""Attention with its KV cache (notebook 07): RoPE, multi-head attention and Multi-head Latent Attention.
"""
