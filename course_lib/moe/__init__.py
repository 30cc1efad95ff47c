"""DeepSeekMoE (notebooks 01-03): the router (``routing``), load balance and auxiliary-loss-free balancing
(``balance``), the expert dispatch (``dispatch``), the layer (``layer``), the toy MoE of notebook 03 (``toy``), and
the checks of their boundaries (``arguments``).
"""
