"""The tools' measurements: fpn_plugin's detector against Detectron2's equivalent
(``tools/benchmark.py``), FLOP counts (``tools/analyze_model.py``), the necks compared
(``tools/compare_necks.py``) and the paper's ablation (``tools/ablation.py``). The tool scripts
import it from tools/, their own folder.

Modules of the benchmark, in the order a run uses them:

- :mod:`.options`: :class:`~.options.BenchmarkOptions`, what a run measures and how (the flags);
- :mod:`.models`: the two configs and the two models with the same weights, torchvision's model;
- :mod:`.inputs`: images and synthetic training targets;
- :mod:`.timing`: the alternating timer (A, B, A, B, ...) and the record of one measurement;
- :mod:`.bench`: the two models, the batch and what several measurements share;
- :mod:`.measurements` (and :mod:`.memory`, with its subprocess :mod:`.memory_worker`): each figure;
- :mod:`.report`: the environment, the Markdown report and the JSON file;
- :mod:`.run`: :func:`~.run.run_benchmark`, the whole run.

Then :mod:`.analysis` (FLOPs, parameters, activations per component), :mod:`.necks` (the neck
comparison), :mod:`.ablation` with :mod:`.ablation_report` (the paper's Tables 1-3), and
:mod:`.checkout` (this checkout's configs, the tools' defaults).
"""
