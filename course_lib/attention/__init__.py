"""Attention with its KV cache (notebooks 07 and 11): rotary position embedding (``rope``), YaRN's long-context
frequencies and softmax scale (``yarn``), the KV cache and its size per token (``cache``), causal attention and
multi-head attention (``mha``), Multi-head Latent Attention in its naive and absorbed forms (``mla``); the
validators of their boundaries (``arguments``).
"""
