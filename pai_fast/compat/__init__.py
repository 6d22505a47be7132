"""perforatedai-compatible import paths: change ``perforatedai`` to ``pai_fast.compat`` in a script's imports.

* current API: :mod:`.globals_perforatedai` (GPA), :mod:`.utils_perforatedai` (UPA),
  :mod:`.library_perforatedai`, :mod:`.modules_perforatedai`;
* old camelCase API: :mod:`.pb_globals` (PBG), :mod:`.pb_utils` (PBU), :mod:`.pb_models` (PBM).
"""
