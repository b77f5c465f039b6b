"""The HTTP decision service (torch-free): config, state backends (in-process,
Redis), bundle sets with pairing checks and atomic reload, the decision pipeline
with budgets and fallbacks, rules (filters, caps, diversity), the decision and
feedback logs, the FastAPI app, and the decisions + feedback join for OPE."""
