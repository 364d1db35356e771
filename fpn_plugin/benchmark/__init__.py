"""Measuring fpn_plugin's detector against Detectron2's equivalent (``tools/benchmark.py``).

Modules, in the order a run uses them:

- :mod:`.options`: :class:`~.options.BenchmarkOptions`, what a run measures and how (the flags);
- :mod:`.models`: the two configs and the two models with the same weights, torchvision's model;
- :mod:`.inputs`: images and synthetic training targets;
- :mod:`.timing`: the alternating timer (A, B, A, B, ...) and the record of one measurement;
- :mod:`.bench`: the two models, the batch and what several measurements share;
- :mod:`.measurements` (and :mod:`.memory`, with its subprocess :mod:`.memory_worker`): each figure;
- :mod:`.report`: the environment, the Markdown report and the JSON file;
- :mod:`.run`: :func:`~.run.run_benchmark`, the whole run;
- :mod:`.workload`: realistic workloads for untrained detectors (also used by the tests).

Nothing is imported here, so that ``import fpn_plugin.benchmark.workload`` stays light.
"""
