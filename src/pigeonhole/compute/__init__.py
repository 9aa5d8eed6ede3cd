"""Compute: job handlers (``handlers``), placement policy (``placement``), and the Ray side
(``dispatcher``, ``worker``, ``runtime``). Only ``dispatcher``, ``worker`` and ``runtime`` import Ray;
the API imports ``handlers`` alone, so it never loads Ray.
"""
