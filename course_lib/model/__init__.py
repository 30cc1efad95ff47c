"""The tiny DeepSeek-style model (notebooks 04-06): the Transformer block (``block``), Multi-Token Prediction
(``mtp``) and the model itself (``tiny``).
"""
