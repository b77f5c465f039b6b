"""Online experiments: hash assignment, the exposure Parquet format, analysis,
the audit archive and synthetic experiments (statistics: :mod:`recsys.evaluation.ab`)."""
