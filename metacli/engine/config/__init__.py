"""The run spec's component configs, importable without torch.

Every pydantic model a run spec's ``algorithm:``, ``model:`` and ``data:`` sections validate against
lives here, with the discriminated unions that select one by ``name``, the names of the online
algorithms and task streams, and the constants the configs' validators check against:

- :mod:`.algorithms`: ``AlgorithmConfig`` and ``ONLINE_ALGORITHM_NAMES``;
- :mod:`.data`: ``DataConfig`` and ``ONLINE_DATASET_NAMES``;
- :mod:`.models`: ``ModelConfig``;
- :mod:`.fields`: the annotated types of their values (counts, seeds, rates, widths) and their bounds.

These modules import only pydantic, so the spec module validates a spec (and reports a typo in it)
in a fraction of a second. The implementations (:mod:`metacli.engine.algorithms`,
:mod:`metacli.engine.data`, :mod:`metacli.engine.models`) import their configs from here and re-export
them; their registries map each name to its class or builder.
"""
