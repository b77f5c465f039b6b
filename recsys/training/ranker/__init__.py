"""The ranker wing (DCN-v2, MLP click-through rankers): ``data`` (impression or
rating features split by request time), ``module`` (LightningModule: BCE, AUC /
log loss / ECE per split) and ``fit`` (fit -> best checkpoint -> val/test ->
model folder with ``features.json`` and parity rows)."""
