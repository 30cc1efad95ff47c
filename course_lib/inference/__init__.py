"""Decoding (notebook 08): MTP modules as a speculative-decoding drafter (``speculative``); ``arguments`` holds the
decoders' boundary checks.
"""
