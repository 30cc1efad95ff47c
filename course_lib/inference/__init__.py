"""Decoding (notebook 08): MTP modules as a speculative-decoding draft (``speculative``).
"""
