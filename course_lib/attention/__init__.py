"""Attention with its KV cache (notebook 07): rotary position embedding (``rope``), the KV cache and its size per
token (``cache``), causal attention and multi-head attention (``mha``), Multi-head Latent Attention in its naive
and absorbed forms (``mla``); the validators of their boundaries (``arguments``).
"""
