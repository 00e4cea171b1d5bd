"""Config files: found (the working directory, then the configs shipped in the
package, then the source tree), loaded with ``--config.KEY=VALUE`` overrides,
their keys checked against the schema ``configs/base.py``, and the absl
``--config`` flag parsed so that a mistake is one line. The values are checked
by ``hcl_jax.config.check``."""

from __future__ import annotations

import difflib
import pathlib
from typing import Any, Sequence


SCHEMA_CONFIG = "base.py"
CONFIG_FLAG = "--config"


class ConfigError(ValueError):
  """A config mistake; the message is one line naming the key."""


def config_dirs() -> list[pathlib.Path]:
  """Where configs/NAME.py is looked for after the working directory."""
  package = pathlib.Path(__file__).resolve().parents[1]  # hcl_jax/
  return [d for d in (package / "configs", package.parent / "configs") if d.is_dir()]


def resolve_config_path(path: str) -> str:
  """``path`` if it is a file, else the shipped config of that name; ConfigError if none.

  A ``:ARG`` after the file (``configs/paper.py:dataset=cifar10,method=hcl``,
  passed to its ``get_config``) is kept as it is.
  """
  file, colon, arg = path.partition(":")
  candidate = pathlib.Path(file)
  if candidate.is_file():
    return path
  if not candidate.is_absolute() and candidate.parent.name in ("configs", ""):
    for directory in config_dirs():
      shipped = directory / candidate.name
      if shipped.is_file():
        return f"{shipped}{colon}{arg}"
  shipped = sorted(p.name for d in config_dirs()[:1] for p in d.glob("*.py"))
  raise ConfigError(f"config file {file!r} not found (nor among the shipped configs: "
                    f"{', '.join(shipped) or 'none'}).")


def base_config(kind: str = "image") -> Any:
  """``configs/base.py``'s config: every key of an image config (``kind``
  "image": its ``get_config()``) or a graph config ("graph": ``graph_config()``)
  with its default.

  The schema, and what the image configs start from. Always the shipped file
  (``hcl_jax/configs`` in a wheel, else the source tree's ``configs/``),
  whatever the working directory holds.
  """
  import importlib.util

  path = next((d / SCHEMA_CONFIG for d in config_dirs() if (d / SCHEMA_CONFIG).is_file()), None)
  if path is None:
    raise ConfigError(f"the schema configs/{SCHEMA_CONFIG} is missing from "
                      f"{', '.join(map(str, config_dirs())) or 'this installation'}.")
  spec = importlib.util.spec_from_file_location("hcl_jax_configs_base", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.graph_config() if kind == "graph" else module.get_config()


def _schema() -> Any:
  return base_config()


def _suggest(key: str, known: Sequence[str], prefix: str) -> str:
  close = difflib.get_close_matches(key, list(known), n=1)
  return f" (did you mean {prefix}.{close[0]}?)" if close else f" (known: {', '.join(sorted(known))})"


def check_keys(config: Any, schema: Any = None, prefix: str = "config") -> None:
  """ConfigError for the first key of ``config`` that the schema doesn't have.

  Keys the schema has but ``config`` lacks are allowed (an older run's
  config.json, evaluated by a newer version).
  """
  schema = _schema() if schema is None else schema
  for key in config.keys():
    if key not in schema:
      raise ConfigError(f"{prefix}.{key}: unknown key{_suggest(key, list(schema.keys()), prefix)}.")
    value, expected = config[key], schema[key]
    if hasattr(expected, "keys"):
      if not hasattr(value, "keys"):
        raise ConfigError(f"{prefix}.{key} must be a group of keys like the schema's; "
                          f"got {value!r}.")
      check_keys(value, expected, f"{prefix}.{key}")


def _check_override_keys(overrides: Sequence[str], config: Any) -> None:
  """An override of a key the loaded config lacks, named with a suggestion."""
  for flag in overrides:
    path = flag[len(CONFIG_FLAG) + 1:].split("=", 1)[0]
    node, prefix = config, "config"
    for part in path.split("."):
      if not hasattr(node, "keys"):
        break
      if part not in node:
        raise ConfigError(f"{flag}: {prefix}.{part} is an unknown key"
                          f"{_suggest(part, list(node.keys()), prefix)}.")
      node, prefix = node[part], f"{prefix}.{part}"


def _load(path: str, overrides: Sequence[str]) -> Any:
  """The config of ``path`` with ``--config.KEY=VALUE`` overrides, parsed as main does."""
  from absl import flags
  from ml_collections import config_flags

  values = flags.FlagValues()
  argv = ["check", f"{CONFIG_FLAG}={path}", *overrides]
  # sys_argv: config_flags finds the override flags there (default: sys.argv).
  config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:
    raise ConfigError(_error_line(e)) from None
  except (KeyError, AttributeError, TypeError) as e:
    message = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    raise ConfigError(f"{path}: {' '.join(message.split())}") from None
  except Exception as e:  # noqa: BLE001  (a config file's own error: name it, one line)
    raise ConfigError(f"config file {path!r} failed to load: {type(e).__name__}: "
                      f"{' '.join(str(e).split())}") from None
  return values.config


def _error_line(error: Exception) -> str:
  """absl's flag error as one line; for a ``get_config`` that raised (a bad
  ``:ARG``), its own message, not the traceback ml_collections wraps it in."""
  text = str(error)
  if "Error whilst parsing config file" in text:
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith(("ValueError: ", "TypeError: ")) else last
  return " ".join(text.split())


def config_overrides(flags_: Sequence[str]) -> list[str]:
  """The ``--config.KEY=VALUE`` flags among ``flags_`` (others are not config)."""
  return [f for f in flags_ if f.startswith(CONFIG_FLAG + ".")]


# The linear readout protocols (hcl_jax.evaluation.protocol, hcl_jax.evaluation.readout_published).


def load(path: str, overrides: Sequence[str] = ()) -> Any:
  """The config of ``path`` (``configs/NAME.py[:ARG]``, found as
  :func:`resolve_config_path` does) with ``--config.KEY=VALUE`` ``overrides``;
  unchecked (the graph configs have a schema of their own)."""
  return _load(resolve_config_path(path), config_overrides(overrides))


def _config_flag_value(argv: Sequence[str]) -> tuple[int, str] | None:
  """(index in argv, value) of the --config flag, either form; None if absent."""
  for i, arg in enumerate(argv):
    if arg.startswith(CONFIG_FLAG + "="):
      return i, arg[len(CONFIG_FLAG) + 1:]
    if arg == CONFIG_FLAG and i + 1 < len(argv):
      return i + 1, argv[i + 1]
  return None


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flags parser for ``app.run(main, flags_parser=parse_flags)``.

  As absl's own, but the --config path (with or without ``:ARG``) is found as
  :func:`resolve_config_path` does, and a config mistake exits with one line
  (``error: ...``, status 2) instead of a traceback.
  """
  import sys

  from absl import flags

  argv = list(argv)
  try:
    found = _config_flag_value(argv)
    if found is not None:
      index, value = found
      path = resolve_config_path(value)
      argv[index] = argv[index].replace(value, path) if argv[index] != value else path
      _check_override_keys(config_overrides(argv), _load(path, ()))
    return flags.FLAGS(argv)
  except ConfigError as e:
    sys.exit(f"error: {e}")
  except flags.Error as e:
    sys.exit(f"error: {_error_line(e)}")
  except (KeyError, AttributeError, TypeError) as e:
    message = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    sys.exit(f"error: {' '.join(message.split())}")
