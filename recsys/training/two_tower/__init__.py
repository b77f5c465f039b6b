"""The two-tower wing: ``data`` (feature tables, training pairs, :class:`FeatureSpec` /
:class:`LoaderSpec`), ``module`` (in-batch softmax with logQ, exact evaluation),
``fit`` (fit -> best checkpoint -> val/test -> ``model/`` + ``embeddings/``) and
``cold_start`` (withheld-item protocol and baselines)."""
