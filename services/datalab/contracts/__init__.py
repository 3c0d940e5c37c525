"""What the services exchange, and the only thing one service may import of another.

routes: the paths services call on each other; datasets: the data service's response
schemas and column kinds; data_client: the one typed client for the data service;
cache_index: the per-dataset Redis index of derived results (queries, charts) that a
dataset delete drops. `make lint` (import-linter) refuses any other cross-service import.
"""
