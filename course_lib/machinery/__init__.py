"""The course's own machinery, apart from what it teaches: the notebook generator (``make_notebooks``), the
environment check (``python -m course_lib.machinery.doctor``), each notebook's measured cost (``notebook_costs``),
how kept outputs print numbers (``formatting``) and the notebooks' diagrams (``diagrams``).
"""
