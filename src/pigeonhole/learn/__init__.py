"""The ML core: extractors, features, incremental heads, evaluation, ONNX export and the search.

Importable without the web stack on purpose: compute workers and benchmarks use it
with only torch/numpy/onnxruntime installed. Submodules are imported explicitly
(``from pigeonhole.learn import head``) so that importing the package stays cheap.

Entry point for training jobs: :func:`pigeonhole.learn.search.run_search` with a
:class:`pigeonhole.learn.data.TrainingSet` and an :class:`pigeonhole.learn.data.ImageSource`.
Modules: ``data`` (training set, cached pixels), ``candidates`` (configs, feature stacks),
``train`` (fine-tuning / from scratch), ``artifacts`` (ONNX + head + card), ``memory``
(what worked on similar datasets), ``search`` (the anytime search), ``tune`` (optional
Ray Tune + ASHA), plus the building blocks ``weights``, ``backbones``, ``preprocess``,
``features``, ``head``, ``evaluate``, ``export``.
"""
