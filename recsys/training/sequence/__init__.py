"""The sequence wing (SASRec, BERT4Rec, GRU4Rec): ``data`` (bucketed DataModule,
typed batches in ``batches``), ``module`` (LightningModule, exact sharded
evaluation), ``fit`` (fit -> best checkpoint -> val/test -> model + embeddings),
``embeddings`` (the run's ``embeddings/`` folder) and ``recommender`` (the same
training behind the baselines' ``fit`` / ``score`` interface)."""
