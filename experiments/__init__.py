"""The built-in experiments, installed as the package ``pipeline._experiments`` (see pyproject.toml).

This file only marks the folder as that package so that ``importlib.resources`` finds it in wheel
and editable installs alike. The experiment files are never imported through it: the loader
(``pipeline.experiments.load_module``) runs each one by path. Names starting with ``_`` are not
experiments.
"""
