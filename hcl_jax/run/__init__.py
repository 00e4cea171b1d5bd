"""The run lifecycle shared by every command that owns a workdir (image and
graph training, evaluation): the workdir lock, config identity and one-line
errors (``guard``), checkpoints with checksums (``checkpointing``), SIGTERM /
SIGINT (``preemption``), metrics (``metrics_log``), each process's log
(``process_log``), local and gs:// paths (``workdir_fs``) and the command-line
wrapper (``entry_point``)."""
