"""Command line of one graph run (see hcl_jax.graph.train).

  python -m hcl_jax.graph.main --config configs/graph.py:dataset=MUTAG \
      --workdir workdirs/graph/mutag --config.loss.beta=2.0

The --config path is found as ``hcl_jax.config.check.parse_flags`` finds it
(the working directory, then the shipped configs), and a bad one, or a bad
``:dataset=``, is one line. The run ends as ``python -m hcl_jax.main`` does
(``hcl_jax.run.entry_point``): 0 when complete, 75 after SIGTERM (saved; rerun to
continue), 130 after Ctrl-C, 1 with one line for what the run refuses (a
workdir another run holds, a changed config without ``--allow_config_change``)
or a config or data mistake.
"""

from __future__ import annotations

from typing import Any

from absl import app

# Before absl parses the flags: it defines the runtime flags entry_point reads.
from hcl_jax.run import entry_point
from hcl_jax.config import check as config_check

_WORKDIR = entry_point.WORKDIR
_CONFIG, _ALLOW_CONFIG_CHANGE = entry_point.define_run_flags()


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
    from hcl_jax.run import lifecycle
    from hcl_jax.graph import train
    return lifecycle.exit_code(train.train_and_evaluate(
        config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value))

  entry_point.run(_WORKDIR.value, config=checked, work=work)


if __name__ == "__main__":
  app.run(main, flags_parser=config_check.parse_flags)
