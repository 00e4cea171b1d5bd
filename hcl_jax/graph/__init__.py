"""The graph half of the paper: InfoGraph (GIN encoder) with hard negatives.

tu_data (TU-format reader, node features, padded batches), model (GIN
encoder and the two FF heads), losses (local-global JSD and the published
JSD_hard), train (the run), evaluate_svc (the SVC protocol). The tables
(``python -m hcl_jax.reproduce --table mutag``) are hcl_jax.reproduce.graph_tables.
"""
