"""What every launcher shares (tpu.py, gke.py, slurm.py): the trainer's command
line, the "--" split of its flags, gs:// paths, and the launcher's error type.

Standard library only. The scripts put the repository root on ``sys.path``
before importing this (``python launch/tpu.py`` starts with ``launch/`` there).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from typing import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

_GS_RE = re.compile(r"^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?$")


class LaunchError(Exception):
  """A bad input or a failed command; a launcher's main() prints it and exits 1."""


def split_trainer_flags(argv: Sequence[str] | None) -> tuple[list[str], list[str]]:
  """(the launcher's own arguments, those after "--"): the latter go to
  hcl_jax.main untouched (every launcher: tpu, gke, slurm)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    return argv, []
  cut = argv.index("--")
  return argv[:cut], argv[cut + 1:]


def parse_launcher_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None
                        ) -> tuple[argparse.Namespace, list[str]]:
  """(the launcher's parsed arguments, the flags for hcl_jax.main after "--")."""
  argv, extra = split_trainer_flags(argv)
  return parser.parse_args(argv), extra


def check_trainer_flags(extra: Sequence[str]) -> None:
  """ValueError unless every word after "--" is a flag (``--KEY=VALUE``)."""
  for flag in extra:
    if not flag.startswith("--"):
      raise ValueError(f"{flag!r} after -- must be a flag of hcl_jax.main such as "
                       "--config.batch_size=1024")


def trainer_command(python: str, config: str, workdir: str, data_dir: str | None,
                    extra: Sequence[str]) -> list[str]:
  """``PYTHON -m hcl_jax.main --config C --workdir W [--config.data_dir=D] EXTRA``."""
  command = [python, "-m", "hcl_jax.main", "--config", config, "--workdir", workdir]
  if data_dir:
    command.append(f"--config.data_dir={data_dir}")
  return command + list(extra)


def check_matches(flag: str, value: str, pattern: re.Pattern, rule: str) -> str:
  """``value`` if ``pattern`` matches all of it; else ValueError "FLAG 'VALUE': RULE"."""
  if not pattern.fullmatch(value or ""):
    raise ValueError(f"{flag} {value!r}: {rule}")
  return value


def validate_gs_path(flag: str, path: str) -> str:
  if not _GS_RE.fullmatch(path or ""):
    raise ValueError(f"{flag} {path!r} is not a gs://BUCKET/PATH location.")
  return path
