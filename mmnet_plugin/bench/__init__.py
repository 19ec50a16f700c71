"""The benchmark harness, installed with the package: ``mmnet bench`` (also
``python -m mmnet_plugin bench``, and ``python benchmarks/run.py`` in a checkout).

Importing :mod:`mmnet_plugin` does not import this package, and importing this package
imports nothing heavy: the harness's optional libraries (matplotlib, scikit-learn, PyYAML,
tensorboard, learn2learn, easyfsl) are imported when a run needs them, with the install
hint ``pip install "mmnet-plugin[bench]"``.

Layout, one concept a module:

- :mod:`.cli`: ``main(argv) -> int`` of ``mmnet bench``; :mod:`.options` (parser, presets,
  defaults) and :mod:`.config` (``--config FILE``: YAML, JSON or TOML; packaged configs in
  ``configs/``);
- :mod:`.grid` (the run over (setting, method) cells, spread over torchrun's ranks),
  :mod:`.jobs` (one cell and its keys), :mod:`.train` (training with val curves, best-on-val
  weights, checkpoints, testing), :mod:`.store` (records on disk, resume);
- :mod:`.checks` (fingerprint agreement), :mod:`.report` (leaderboard text, markdown, CSV,
  plots), :mod:`.tensorboard` (``--tensorboard DIR``);
- :mod:`.files` (atomic writes, ``safe_torch_load``), :mod:`.fingerprints` (keys, seeds,
  stream fingerprints, data digests), :mod:`.identity` (source digest, git commit, versions,
  device record), :mod:`.meters` (peak memory, stopwatch); :mod:`.common` re-exports them;
- :mod:`.methods` (the method API and registry: ``register_method``, ``resolve_method``,
  ``--methods module:Class``, the entry-point group ``mmnet_plugin.methods``),
  :mod:`.recipes`, :mod:`.published`;
- :mod:`.analysis` (the paper's section 4.6 analyses) and :mod:`.speed` (step and test time).
"""

INSTALL_HINT = 'pip install "mmnet-plugin[bench]"'

__all__ = ["INSTALL_HINT"]
