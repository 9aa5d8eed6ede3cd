"""Compute: job handlers (``handlers``), placement policy (``placement``), node registry (``nodes``),
lease, and the Ray side: ``dispatcher`` with its parts (``cluster``, ``claiming``, ``reports``,
``outcomes``), ``worker`` and ``runtime``. Only the Ray side imports Ray; the API imports the others
alone, so it never loads Ray.
"""
