"""Model lifecycle and governance: the model registry on MLflow's model registry
(:mod:`~recsys.lifecycle.registry`), promotion gates with stored evidence
(:mod:`~recsys.lifecycle.gates`), the append-only audit trail
(:mod:`~recsys.lifecycle.audit`), lineage read from runs and bundles
(:mod:`~recsys.lifecycle.lineage`) and model cards (:mod:`~recsys.lifecycle.cards`).
docs/lifecycle.md."""
