"""Evaluation of a frozen encoder: ``protocol.evaluate_encoder`` (what a run
and ``python -m hcl_jax.evaluate`` call) over ``features``, ``knn``,
``linear_readout`` and ``readout_published``."""
