"""Attention with its KV cache (notebooks 07, 11 and 15): rotary position embedding (``rope``), YaRN's long-context
frequencies and softmax scale (``yarn``), the KV cache and its size per token (``cache``), causal attention and
multi-head attention (``mha``), Multi-head Latent Attention in its naive and absorbed forms (``mla``), DeepSeek
Sparse Attention's lightning indexer (``indexer``) and MLA attending to its top-k (``dsa``); the validators of their
boundaries (``arguments``).
"""
