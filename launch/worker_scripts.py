"""The shell scripts ``launch/tpu.py`` sends to every TPU worker over ssh.

``setup_script`` unpacks a release and builds its venv; ``preflight_script``
refuses (or ``--replace``s) a live training and clears what a dead one left;
``run_script`` starts the trainer detached under ``launch/worker_run.sh``
(which writes the pid file and copies the log to WORKDIR/logs/);
``stop_script`` and ``wait_script`` end it or wait for it. Each is one POSIX
sh line with double quotes only, so the printed gcloud command stays one
readable '...' word. Standard library only.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import time
from typing import Sequence

from launch.common import REPO_ROOT, LaunchError, trainer_command

# Where things live on every worker, relative to the remote $HOME.
# Each setup unpacks into a new release folder; a training keeps running
# from the release it started in while a later setup installs the next one.
REMOTE_RELEASES = "$HOME/hcl_jax_releases"
REMOTE_CURRENT = "$HOME/hcl_jax_current"     # symlink -> the newest release
REMOTE_VENVS = "$HOME/hcl_jax_venvs"         # one per requirements + jax pin
REMOTE_RUN_DIR = "$HOME/hcl_jax_run"
REMOTE_LOG = f"{REMOTE_RUN_DIR}/train.log"
REMOTE_PID = f"{REMOTE_RUN_DIR}/train.pid"
KEEP_RELEASES = 3
# libtpu's lock: a process killed hard leaves it behind and the next one
# fails with "TPU in use" / "Device or resource busy".
LIBTPU_LOCKFILE = "/tmp/libtpu_lockfile"
LOG_COPY_SECONDS = 300
STALE_GRACE_SECONDS = 30   # for a stale training to exit after SIGTERM
# jax's TPU wheels (libtpu) index, as in Google's JAX-on-TPU instructions.
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
PYTHON = "python3.11"   # pyproject: requires-python >= 3.11


def jax_version(requirements: pathlib.Path = REPO_ROOT / "requirements.txt"
                ) -> str:
  """The pinned ``jax==X`` of requirements.txt."""
  for line in requirements.read_text().splitlines():
    match = re.fullmatch(r"\s*jax\s*==\s*([^\s;#]+).*", line)
    if match:
      return match.group(1)
  raise LaunchError(f"no 'jax==VERSION' pin in {requirements}")


def one_line(statements: Sequence[str]) -> str:
  """POSIX sh statements on one line (a background ``&`` takes no ``;``).

  Remote scripts use double quotes only, so the whole script shell-quotes as
  one readable '...' word in the printed gcloud command.
  """
  line = ""
  for statement in statements:
    line += statement + (" " if statement.endswith("&") else "; ")
  return line.rstrip("; ").rstrip()


def remote_tarball(release: str) -> str:
  return f"hcl_jax_src_{release}.tar.gz"   # in the remote $HOME


def release_name(ref: str, now: float) -> str:
  """``20261201T063000Z-<commit>``: a new folder per setup, sorted by time."""
  try:
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12",
         f"{ref}^{{commit}}"], capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError) as e:
    raise LaunchError(f"--ref {ref!r} is not a commit of {REPO_ROOT}: "
                      f"{getattr(e, 'stderr', e)}".strip()) from None
  stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
  return f"{stamp}-{commit}"


def setup_script(jax_pin: str, release: str) -> str:
  """Shell run on every worker: unpack a new release, build its venv.

  Never touches an older release (a training may run from it); prunes
  releases beyond the newest KEEP_RELEASES except the running one.
  """
  rel = f"{REMOTE_RELEASES}/{release}"
  pip = '"$VENV/bin/pip"'
  return one_line([
      "set -eu",
      # TPU VM images ship an older python; the project needs 3.11.
      f"if ! {PYTHON} -m venv --help >/dev/null 2>&1; then "
      "sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive "
      f"apt-get install -y -qq {PYTHON} {PYTHON}-venv; fi",
      f'REL="{rel}"',
      'rm -rf "$REL.partial"',
      'mkdir -p "$REL.partial"',
      f'tar -xzf "$HOME/{remote_tarball(release)}" -C "$REL.partial"',
      f'rm -f "$HOME/{remote_tarball(release)}"',
      # One venv per (requirements.txt, jax pin): reused, never changed once
      # complete, so a running training's packages stay as they were.
      f'KEY=$( (cat "$REL.partial/requirements.txt"; echo "{jax_pin}") | '
      "sha256sum | cut -c1-16)",
      f'VENV="{REMOTE_VENVS}/$KEY"',
      'if [ ! -f "$VENV/.complete" ]; then rm -rf "$VENV"; '
      f'{PYTHON} -m venv "$VENV"; {pip} install -q --upgrade pip; '
      f'{pip} install -q -r "$REL.partial/requirements.txt"; '
      f'{pip} install -q "jax[tpu]=={jax_pin}" -f {LIBTPU_FIND_LINKS}; '
      'touch "$VENV/.complete"; fi',
      'ln -sfn "$VENV" "$REL.partial/.venv"',
      # Imports only (from the release folder: python -m puts it on the
      # path); touching the TPU backend here would block on a pod slice
      # until every host did the same.
      '(cd "$REL.partial" && ".venv/bin/python" -c "import jax, hcl_jax; '
      'print(jax.__version__)")',
      'mv "$REL.partial" "$REL"',
      f'ln -sfn "$REL" "{REMOTE_CURRENT}.new"',
      f'mv -Tf "{REMOTE_CURRENT}.new" "{REMOTE_CURRENT}"',
      f'RUNNING=$(readlink -f "/proc/$(cat "{REMOTE_PID}" 2>/dev/null || '
      'echo 0)/cwd" 2>/dev/null || true)',
      f'for OLD in $(ls -1d "{REMOTE_RELEASES}"/*/ | sort | '
      f"head -n -{KEEP_RELEASES}); do OLD=${{OLD%/}}; "
      '[ "$OLD" = "$RUNNING" ] || [ "$OLD" = "$REL" ] || rm -rf "$OLD"; done',
      'echo "hcl_jax release $REL ready on $(hostname)"',
  ])


def train_command(args: argparse.Namespace) -> list[str]:
  """The training program every worker runs (from its release folder)."""
  return trainer_command(".venv/bin/python", args.config, args.workdir, args.data_dir,
                         args.extra)


def remote_words(cmd: Sequence[str]) -> str:
  """Double-quotes each word so remote $HOME expands, and nothing else."""
  for word in cmd:
    if re.search(r'["\\`]|\$(?!HOME/)', word):
      raise ValueError(f"argument {word!r} contains a quote, backslash, "
                       "backtick or $: not supported in a remote command")
  return " ".join(
      word if re.fullmatch(r"[-\w./=:,@+]+", word) else f'"{word}"'
      for word in cmd)


def _stop_statements(grace_seconds: int) -> list[str]:
  pid = f'"{REMOTE_PID}"'
  return [
      f"PID=$(cat {pid})",
      'if kill -0 "$PID" 2>/dev/null; then kill -TERM "-$PID"; '
      f"for _ in $(seq {grace_seconds}); do "
      'kill -0 "$PID" 2>/dev/null || break; sleep 1; done; '
      'if kill -0 "$PID" 2>/dev/null; then kill -KILL "-$PID"; '
      f'echo "killed $PID on $(hostname) after {grace_seconds} s"; '
      'else echo "stopped $PID on $(hostname)"; fi; fi',
      f"rm -f {pid}",
  ]


def preflight_script(args: argparse.Namespace,
                     lockfile: str = LIBTPU_LOCKFILE) -> str:
  """Every worker, before a run: refuse (or --replace) a live training, then
  clear what a dead run left: its processes and the libtpu lockfile."""
  pid = f'"{REMOTE_PID}"'
  alive = f'[ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null'
  if args.replace:
    on_alive = one_line([f"if {alive}; then " +
                          one_line(_stop_statements(args.grace_seconds)),
                          "fi"])
  else:
    on_alive = (f'if {alive}; then echo "hcl_jax training already running '
                f'(pid $(cat {pid})) on $(hostname): stop it first, or pass '
                '--replace" >&2; exit 1; fi')
  return one_line([
      "set -eu",
      f'mkdir -p "{REMOTE_RUN_DIR}"',
      on_alive,
      # Trainings the pid file lost (e.g. a host that hung in
      # jax.distributed.initialize while the others died).
      f'STALE=$(pgrep -u "$(id -u)" -f "{REMOTE_RELEASES}/" | '
      'grep -vx "$$" || true)',
      'if [ -n "$STALE" ]; then echo "stopping stale hcl_jax processes" '
      '$STALE "on $(hostname)"; kill -TERM $STALE 2>/dev/null || true; '
      f"for _ in $(seq {STALE_GRACE_SECONDS}); do ALIVE=; for P in $STALE; do "
      'kill -0 "$P" 2>/dev/null && ALIVE=1; done; [ -z "$ALIVE" ] && break; '
      "sleep 1; done; kill -KILL $STALE 2>/dev/null || true; fi",
      f'if [ -e "{lockfile}" ]; then rm -f "{lockfile}" 2>/dev/null || '
      f'sudo -n rm -f "{lockfile}"; echo "removed {lockfile} on $(hostname)"; '
      "fi",
  ])


def logs_destination(workdir: str) -> str:
  return workdir.rstrip("/") + "/logs"


def run_script(args: argparse.Namespace) -> str:
  """Shell run on every worker: start training detached, log to a file.

  ``launch/worker_run.sh`` runs the trainer and copies the log to
  WORKDIR/logs/ every LOG_COPY_SECONDS and when it exits.
  """
  pid, log = f'"{REMOTE_PID}"', f'"{REMOTE_LOG}"'
  return one_line([
      "set -eu",
      f'mkdir -p "{REMOTE_RUN_DIR}"',
      f'REL=$(readlink -f "{REMOTE_CURRENT}" || true)',
      'if [ -z "$REL" ] || [ ! -x "$REL/.venv/bin/python" ]; then echo "no '
      'hcl_jax release on $(hostname): run setup first" >&2; exit 1; fi',
      'cd "$REL"',
      # A retried ssh (gcloud retries on exit 255, e.g. a dropped connection
      # after the start) finds the first start's trainer: not a second one.
      f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then echo '
      f'"hcl_jax training already running (pid $(cat {pid})) on $(hostname): '
      'not starting a second"; exit 0; fi',
      f'echo "=== start $(date -u +%FT%TZ) on $(hostname), $REL ===" >> {log}',
      # setsid: its own session, so a dropped ssh (SIGHUP) can't reach it
      # and stop can signal its whole process group; nohup for good measure.
      # worker_run.sh writes the pid file itself (noclobber: one trainer).
      f'setsid nohup sh "$REL/launch/worker_run.sh" --pid-file {pid} {log} '
      f"{remote_words([logs_destination(args.workdir)])} "
      # The absolute python path marks the process as ours (preflight).
      f'{LOG_COPY_SECONDS} -- env PYTHONUNBUFFERED=1 "$REL/.venv/bin/python" '
      f"{remote_words(train_command(args)[1:])} >> {log} 2>&1 < /dev/null &",
      f"for _ in $(seq 50); do [ -s {pid} ] && break; sleep 0.1; done",
      f'echo "started hcl_jax training (pid $(cat {pid} 2>/dev/null || echo $!)) on '
      f'$(hostname), log {REMOTE_LOG}"',
  ])


def stop_script(grace_seconds: int) -> str:
  """SIGTERM the training's process group (it checkpoints), then SIGKILL."""
  pid = f'"{REMOTE_PID}"'
  return one_line([
      f'if [ ! -f {pid} ]; then echo "no hcl_jax training on $(hostname)"; '
      "exit 0; fi",
      *_stop_statements(grace_seconds),
  ])


def wait_script(timeout_seconds: int) -> str:
  """Waits for a finished training to exit (its last log copy included)."""
  pid = f'"{REMOTE_PID}"'
  return one_line([
      f"if [ -f {pid} ]; then for _ in $(seq {timeout_seconds}); do "
      f'kill -0 "$(cat {pid})" 2>/dev/null || break; sleep 1; done; fi',
      'echo "hcl_jax training done on $(hostname)"',
  ])
