"""Experiments: N models x M boards x modes x backends described by one YAML file, run through the bench machinery
(``tinyhost.bench.session``), stored one row per cell and run, reported as tables and Pareto fronts, and checked
against a link and power budget.

Layers, bottom to top: ``config`` (the YAML file, validated, expanded into cells) -> ``plan`` (which cells fit
their board, how long they will take) -> ``execute`` (the cells through ``bench.session.run``, in parallel on
virtual boards, resumable) -> ``store`` (the results database) -> ``pareto``, ``budget`` and ``report``.
"""
