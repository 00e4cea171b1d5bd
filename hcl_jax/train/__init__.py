"""Pre-training: the jitted, sharded train step (``step``), its optimizer
(``optim``), the non-finite guard (``divergence``), throughput and MFU
(``throughput``) and the profiler switch (``profiling``)."""
