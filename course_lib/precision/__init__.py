"""Low-precision training (notebook 10): FP8 with fine-grained scaling ([V3] 3.3).

``formats`` (E4M3 / E5M2, tiles, scale formats, a ``Quantized`` matrix), ``quantization`` (quantise with one scale
per tile or block), ``linear`` (the FP8 linear layer: three GEMMs on FP8 operands, ``to_fp8``), ``accumulation``
(the tensor cores' limited accumulation and V3's promotion); ``arguments`` holds their boundary checks.
"""
