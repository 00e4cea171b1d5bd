"""Reproduce a table of the HCL paper: every cell x seed, then a report.

  python -m hcl_jax.reproduce --table stl10 --seeds 3 --workdir workdirs/reproduce
  python -m hcl_jax.reproduce --table stl10 --seeds 3 --dry-run
  python -m hcl_jax.reproduce --table stl10 --report-only
  python -m hcl_jax.reproduce --table digits --epochs 2 -- --config.data_dir=data
  python -m hcl_jax.reproduce --table mutag     # graphs: see graph_tables.py
  python -m hcl_jax.reproduce --table stl10 --seeds 3 --workdir gs://BKT/hcl \\
      --tpu-commands --zone us-central2-b -- --config.data_dir=gs://BKT/tfds

A table has six cells (the rows of the paper's STL-10 table): SimCLR;
Debiased (tau+ 0.1); Hard (tau+ 0.1) with beta 0.5, 1, 2, 6. Each cell and
seed k in 0..N-1 is one run of ``python -m hcl_jax.main`` in its own workdir
``ROOT/<table>/<cell>/seed<k>``, launched as a subprocess. Its ``--config``
selects the dataset, the method and so the evaluation protocol
(``configs/paper.py:dataset=stl10,method=hcl``; the digits demo:
``configs/digits.py`` with the method's loss as flags), and the seed and beta
are flags, so every printed command shows what the run runs. A run whose
``results.json`` exists is skipped; an interrupted one is started again with
the same workdir, and hcl_jax.main resumes it from its checkpoints.

Afterwards (and with ``--report-only``) ``docs/results/<table>.md`` and
``<table>.png`` compare our linear top-1 (mean +- sample std over seeds) and
kNN top-1 with the published numbers (STL-10 only; docs/reference.md), give
each cell's paired difference to SimCLR (same seed) with its 95 % t-interval,
and say which readout protocol made each number.

``--table`` chooses from one registry (``cli.TABLES``: name -> kind): the
image tables above and the graph tables (mutag, proteins, ...: InfoGraph
rows, ``graph_tables``, which has its own flags and report).

Modules: ``tables`` (the cells, the published numbers, each run's config and
FLOP estimates), ``runner`` (``plan_runs`` builds the runs without starting
anything; run status, running them, the TPU commands from launch/tpu.py),
``report`` (pure: ``collect_results``, ``summarize``, ``write_report``) and
``cli`` (the command line).
"""
