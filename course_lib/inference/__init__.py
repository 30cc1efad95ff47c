"""Decoding and serving: MTP modules as a speculative-decoding drafter (``speculative``, notebook 08); redundant
experts placed by DeepSeek's EPLB (``eplb``), what a placement does to each GPU's load (``expert_placement``) and
what a day of serving costs (``serving_costs``, notebook 13); ``arguments`` holds the boundary checks.
"""
