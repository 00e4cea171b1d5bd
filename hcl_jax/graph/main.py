"""Command line of one graph run (see hcl_jax.graph.train).

  python -m hcl_jax.graph.main --config configs/graph.py:dataset=MUTAG \
      --workdir workdirs/graph/mutag --config.loss.beta=2.0

The --config path is found as ``hcl_jax.config_check.parse_flags`` finds it
(the working directory, then the shipped configs), and a bad one, or a bad
``:dataset=``, is one line. The run ends as ``python -m hcl_jax.main`` does
(``hcl_jax.entry_point``): 0 when complete, 75 after SIGTERM (saved; rerun to
continue), 130 after Ctrl-C, 1 with one line for what the run refuses (a
workdir another run holds, a changed config without ``--allow_config_change``)
or a config or data mistake.
"""

from __future__ import annotations

from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

# Before absl parses the flags: it defines the runtime flags entry_point reads.
from hcl_jax import entry_point
from hcl_jax import config_check

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/graph.py:dataset=NAME")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume even though the config's identity (dataset, batch size, seed, model, loss, "
    "learning rate) differs from the checkpoints' (more epochs never need this).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required.")

  def checked() -> Any:
    from hcl_jax.graph import train
    train.validate_config(_CONFIG.value)
    return _CONFIG.value

  def work(config: Any) -> int:
    from hcl_jax import lifecycle
    from hcl_jax.graph import train
    return lifecycle.exit_code(train.train_and_evaluate(
        config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value))

  entry_point.run(_WORKDIR.value, config=checked, work=work)


if __name__ == "__main__":
  app.run(main, flags_parser=config_check.parse_flags)
