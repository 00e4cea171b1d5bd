#!/usr/bin/env python3
"""A fake ``gcloud`` for the launcher tests: the documented grammar, and state.

It accepts exactly the commands ``launch/tpu.py`` may run, parsed the way
gcloud's reference pages give their synopses (Google Cloud SDK reference,
cloud.google.com/sdk/gcloud/reference/..., read 2026-12), and rejects
anything else (unknown command or flag, a missing required flag, a value
flag without value, positionals in the wrong number or form):

  gcloud compute tpus tpu-vm create (TPU : --zone=ZONE) --version=VERSION
      [--async] [--boot-disk=[KEY=VALUE,…]] [--data-disk=[mode=MODE],[source=SOURCE]]
      [--description=DESCRIPTION] [--internal-ips] [--labels=[KEY=VALUE,…]]
      [--metadata=[KEY=VALUE,…]] [--metadata-from-file=[KEY=VALUE,…]]
      [--network=NETWORK; default="default"] [--preemptible]
      [--queue-count=QUEUE_COUNT] [--range=RANGE] [--reserved]
      [--scopes=[SCOPES,…]] [--service-account=SERVICE_ACCOUNT]
      [--shielded-secure-boot] [--spot] [--subnetwork=SUBNETWORK]
      [--tags=[TAGS,…]] [--accelerator-type=ACCELERATOR_TYPE; default="v2-8"
      | --topology=TOPOLOGY --type=TYPE] [GCLOUD_WIDE_FLAG …]
  gcloud compute tpus tpu-vm delete (TPU : --zone=ZONE) [--async] [GCLOUD_WIDE_FLAG …]
  gcloud compute tpus tpu-vm describe (TPU : --zone=ZONE) [GCLOUD_WIDE_FLAG …]
  gcloud compute tpus tpu-vm ssh [USER@]TPU [--dry-run] [--force-key-file-overwrite]
      [--internal-ip] [--plain] [--ssh-flag=SSH_FLAG] [--ssh-key-file=SSH_KEY_FILE]
      [--strict-host-key-checking=STRICT_HOST_KEY_CHECKING]
      [--worker=WORKER; default="0"] [--zone=ZONE]
      [--command=COMMAND --output-directory=OUTPUT_DIRECTORY]
      [--ssh-key-expiration=SSH_KEY_EXPIRATION|--ssh-key-expire-after=SSH_KEY_EXPIRE_AFTER]
      [GCLOUD_WIDE_FLAG …] [-- SSH_ARGS …]
  gcloud compute tpus tpu-vm scp [[USER@]INSTANCE:]SRC [[[USER@]INSTANCE:]SRC …]
      [[USER@]INSTANCE:]DEST [--compress] [--dry-run] [--force-key-file-overwrite]
      [--internal-ip] [--plain] [--recurse] [--scp-flag=SCP_FLAG]
      [--ssh-key-file=SSH_KEY_FILE] [--strict-host-key-checking=STRICT_HOST_KEY_CHECKING]
      [--worker=WORKER; default="0"] [--zone=ZONE]
      [--ssh-key-expiration=SSH_KEY_EXPIRATION|--ssh-key-expire-after=SSH_KEY_EXPIRE_AFTER]
      [GCLOUD_WIDE_FLAG …]
  gcloud compute tpus queued-resources create (QUEUED_RESOURCE : --zone=ZONE)
      --runtime-version=RUNTIME_VERSION
      (--accelerator-type=ACCELERATOR_TYPE | --topology=TOPOLOGY --type=TYPE)
      (--node-id=NODE_ID | [--node-count=NODE_COUNT : --node-prefix=NODE_PREFIX])
      [--async] [--boot-disk=[KEY=VALUE,…]] [--data-disk=[mode=MODE],[source=SOURCE]]
      [--description=DESCRIPTION] [--guaranteed] [--internal-ips]
      [--labels=[KEY=VALUE,…]] [--metadata=[KEY=VALUE,…]]
      [--metadata-from-file=[KEY=VALUE,…]] [--network=NETWORK; default="default"]
      [--range=RANGE] [--reserved] [--scopes=[SCOPES,…]]
      [--service-account=SERVICE_ACCOUNT] [--shielded-secure-boot] [--spot]
      [--subnetwork=SUBNETWORK] [--tags=[TAGS,…]]
      [--valid-after-duration=VALID_AFTER_DURATION] [--valid-after-time=VALID_AFTER_TIME]
      [--valid-until-duration=VALID_UNTIL_DURATION] [--valid-until-time=VALID_UNTIL_TIME]
      [--reservation-host-folder=… --reservation-host-organization=…
       --reservation-host-project=…] [GCLOUD_WIDE_FLAG …]
  gcloud compute tpus queued-resources describe (QUEUED_RESOURCE : --zone=ZONE) [GCLOUD_WIDE_FLAG …]
  gcloud compute tpus queued-resources delete (QUEUED_RESOURCE : --zone=ZONE)
      [--async] [--force] [GCLOUD_WIDE_FLAG …]
  gcloud storage ls [PATH …] [--additional-headers=HEADER=VALUE] [--all-versions, -a]
      [--buckets, -b] [--etag, -e] [--exhaustive] [--fetch-encrypted-object-hashes]
      [--format=FORMAT] [--next-page-token=NEXT_PAGE_TOKEN]
      [--read-paths-from-stdin, -I] [--readable-sizes] [--recursive, -R, -r]
      [--soft-deleted] [--full, -L | --json, -j | --long, -l]
      [--decryption-keys=[DECRYPTION_KEY,…]] [GCLOUD_WIDE_FLAG …]

GCLOUD_WIDE_FLAGs: --account, --billing-project, --configuration,
--flags-file, --flatten, --format, --help, --impersonate-service-account,
--log-http, --project, --quiet (-q), --trace-token, --verbosity.

Value flags take ``--flag=value`` or ``--flag value``, as gcloud's argparse
does. The fake has no gcloud configuration, so the zone must come from
``--zone`` (the launcher always passes it); it enforces scp's rule that the
sources are all local and the destination remote or the other way round, and
that a local source exists (the old ``scp NAME SRC NAME:DEST`` form names a
local file "NAME" and fails, as scp does).

State (a JSON file named by $FAKE_GCLOUD_STATE): TPU nodes (CREATING is
skipped: a create returns READY, as gcloud's create waits), queued resources
(CREATING -> ACCEPTED -> WAITING_FOR_RESOURCES -> PROVISIONING -> ACTIVE, one
step per describe, as the queued-resources page lists them; the node appears
at ACTIVE), objects in buckets, scripted stockouts and ssh failures, every
call, and every call rejected for its grammar. Also modelled, from gcloud's
reference and Cloud TPU's troubleshooting pages:

* ``sdk_version`` ("530.0.0"): what ``gcloud version --format=json`` names.
* ``ssh_drops``: that many runs of an ssh ``--command`` (containing
  ``ssh_drop_match``, default any) reach the workers and then lose the
  connection (ssh exit 255); gcloud retries the command (up to 10 times), so
  the workers run it again: node["ssh"] records each run.
* ``worker_exit`` {worker: code}: the command fails on those workers; with
  ``--worker=all`` gcloud exits with the first failing worker's code, but an
  ``sdk_version`` below 500 returns 0 (what the launcher's version floor is for).
* ``ssh_key_not_in_agent``: ssh fails at once with gcloud's SSHKeyNotInAgent.
* ``storage_error``: ``storage ls`` fails with that message (e.g. a 403),
  not "matched no objects".
Tests drive it through ``install``, ``preempt``, ``put_object`` and ``load``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Any

WIDE_VALUE = {"--account", "--billing-project", "--configuration",
              "--flags-file", "--flatten", "--format",
              "--impersonate-service-account", "--project", "--trace-token",
              "--verbosity"}
WIDE_BOOL = {"--help", "--log-http", "--quiet", "-q"}

_CREATE_COMMON_VALUE = {"--boot-disk", "--data-disk", "--description",
                        "--labels", "--metadata", "--metadata-from-file",
                        "--network", "--range", "--scopes", "--service-account",
                        "--subnetwork", "--tags", "--accelerator-type",
                        "--topology", "--type", "--zone"}
_SSH_VALUE = {"--ssh-key-file", "--strict-host-key-checking", "--worker",
              "--zone", "--ssh-key-expiration", "--ssh-key-expire-after"}

# command path -> (value flags, boolean flags, positionals (min, max), required)
GRAMMAR: dict[tuple[str, ...], tuple[set[str], set[str], tuple[int, float],
                                     set[str]]] = {
    ("compute", "tpus", "tpu-vm", "create"): (
        _CREATE_COMMON_VALUE | {"--version", "--queue-count"},
        {"--async", "--internal-ips", "--preemptible", "--reserved",
         "--shielded-secure-boot", "--spot"}, (1, 1), {"--version", "--zone"}),
    ("compute", "tpus", "tpu-vm", "delete"): (
        {"--zone"}, {"--async"}, (1, 1), {"--zone"}),
    ("compute", "tpus", "tpu-vm", "describe"): (
        {"--zone"}, set(), (1, 1), {"--zone"}),
    ("compute", "tpus", "tpu-vm", "ssh"): (
        _SSH_VALUE | {"--ssh-flag", "--command", "--output-directory"},
        {"--dry-run", "--force-key-file-overwrite", "--internal-ip", "--plain"},
        (1, 1), {"--zone"}),
    ("compute", "tpus", "tpu-vm", "scp"): (
        _SSH_VALUE | {"--scp-flag"},
        {"--compress", "--dry-run", "--force-key-file-overwrite",
         "--internal-ip", "--plain", "--recurse"}, (2, float("inf")),
        {"--zone"}),
    ("compute", "tpus", "queued-resources", "create"): (
        _CREATE_COMMON_VALUE | {"--runtime-version", "--node-id",
                                "--node-count", "--node-prefix",
                                "--valid-after-duration", "--valid-after-time",
                                "--valid-until-duration", "--valid-until-time",
                                "--reservation-host-folder",
                                "--reservation-host-organization",
                                "--reservation-host-project"},
        {"--async", "--guaranteed", "--internal-ips", "--reserved",
         "--shielded-secure-boot", "--spot"}, (1, 1),
        {"--runtime-version", "--zone"}),
    ("compute", "tpus", "queued-resources", "describe"): (
        {"--zone"}, set(), (1, 1), {"--zone"}),
    ("compute", "tpus", "queued-resources", "delete"): (
        {"--zone"}, {"--async", "--force"}, (1, 1), {"--zone"}),
    ("version",): ({"--format"}, set(), (0, 0), set()),
    ("storage", "ls"): (
        {"--additional-headers", "--next-page-token", "--decryption-keys"},
        {"--all-versions", "-a", "--buckets", "-b", "--etag", "-e",
         "--exhaustive", "--fetch-encrypted-object-hashes",
         "--read-paths-from-stdin", "-I", "--readable-sizes", "--recursive",
         "-R", "-r", "--soft-deleted", "--full", "-L", "--json", "-j",
         "--long", "-l"}, (0, float("inf")), set()),
}

_REMOTE_RE = re.compile(r"^(?:[^@:/\s]+@)?([a-z][-a-z0-9]*):(.*)$")


class GrammarError(Exception):
  """gcloud would reject this command line (exit 2)."""


def parse(argv: list[str]) -> tuple[tuple[str, ...], list[str], dict[str, Any],
                                    list[str]]:
  """argv (without "gcloud") -> (command, positionals, flags, ssh args)."""
  for length in (4, 2, 1):
    command = tuple(argv[:length])
    if command in GRAMMAR:
      break
  else:
    raise GrammarError(f"unknown command: gcloud {' '.join(argv[:4])}")
  value_flags, bool_flags, (low, high), required = GRAMMAR[command]
  value_flags, bool_flags = value_flags | WIDE_VALUE, bool_flags | WIDE_BOOL
  positionals: list[str] = []
  flags: dict[str, Any] = {}
  rest = argv[len(command):]
  ssh_args: list[str] = []
  i = 0
  while i < len(rest):
    word = rest[i]
    if word == "--":
      if command[-1] != "ssh":
        raise GrammarError(f"unrecognized arguments: -- {' '.join(rest[i+1:])}")
      ssh_args = rest[i + 1:]
      break
    if word.startswith("-") and word != "-":
      name, eq, value = word.partition("=")
      if name in value_flags:
        if not eq:
          if i + 1 >= len(rest):
            raise GrammarError(f"argument {name}: expected one argument")
          i += 1
          value = rest[i]
        if name in flags and name not in ("--ssh-flag", "--scp-flag"):
          raise GrammarError(f"argument {name}: given twice")
        flags[name] = value
      elif name in bool_flags:
        if eq:
          raise GrammarError(f"argument {name}: ignored explicit argument "
                             f"{value!r}")
        flags[name] = True
      else:
        raise GrammarError(f"unrecognized arguments: {word}")
    else:
      positionals.append(word)
    i += 1
  if not low <= len(positionals) <= high:
    raise GrammarError(f"{' '.join(command)} takes {low}"
                       f"{'' if high == low else '+'} positional argument(s), "
                       f"got {positionals}")
  missing = sorted(required - set(flags))
  if missing:
    raise GrammarError(f"argument {missing[0]}: must be specified")
  if command[-1] == "create" and command[2] == "queued-resources":
    if ("--accelerator-type" in flags) == ("--topology" in flags or
                                           "--type" in flags):
      raise GrammarError("exactly one of (--accelerator-type | --topology "
                         "--type) must be specified")
    if ("--node-id" in flags) == ("--node-count" in flags):
      raise GrammarError("exactly one of (--node-id | --node-count "
                         "--node-prefix) must be specified")
  if command[-1] == "create" and "--accelerator-type" in flags and (
      "--topology" in flags or "--type" in flags):
    raise GrammarError("--accelerator-type: at most one of "
                       "--accelerator-type | --topology --type")
  if command[-1] == "scp":
    _check_scp(positionals)
  return command, positionals, flags, ssh_args


def _check_scp(positionals: list[str]) -> None:
  *sources, dest = positionals
  remote_sources = [bool(_REMOTE_RE.match(s)) for s in sources]
  remote_dest = bool(_REMOTE_RE.match(dest))
  if remote_dest and any(remote_sources):
    raise GrammarError("all sources must be local files when the destination "
                       "is remote")
  if not remote_dest and not all(remote_sources):
    raise GrammarError("either the sources or the destination must be a "
                       "remote INSTANCE:PATH")
  instances = {_REMOTE_RE.match(p).group(1) for p in positionals
               if _REMOTE_RE.match(p)}
  if len(instances) != 1:
    raise GrammarError(f"all remote paths must name one instance: {instances}")


def check(argv: list[str]) -> None:
  """Raises GrammarError for a command line gcloud would reject."""
  if not argv or argv[0] != "gcloud":
    raise GrammarError(f"not a gcloud command: {argv[:1]}")
  parse(list(argv[1:]))


# --------------------------------------------------------------------------
# State.


def _workers(accelerator_type: str) -> int:
  """Hosts of a slice (Google's TPU v2...v6e pages), for --worker checks."""
  match = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v6e)-([0-9]+)",
                       accelerator_type)
  if not match:
    return 1
  size = int(match.group(2))
  if match.group(1) in ("v5litepod", "v6e"):
    return 1 if size <= 8 else size // 4
  chips = size // 2
  return 1 if chips <= 4 else chips // 4


_SSH_RETRIES = 10   # gcloud tpu-vm ssh: retries a command that ends in 255


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(p) for p in text.split("."))


def _empty_state() -> dict[str, Any]:
  return {"nodes": {}, "queued": {}, "objects": [], "stockouts": 0,
          "ssh_failures": 0, "calls": [], "rejected": [], "sdk_version": "530.0.0",
          "ssh_drops": 0, "worker_exit": {}, "ssh_key_not_in_agent": False,
          "storage_error": None}


def load(path: str | os.PathLike) -> dict[str, Any]:
  path = pathlib.Path(path)
  return json.loads(path.read_text()) if path.exists() else _empty_state()


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
  tmp = pathlib.Path(f"{path}.tmp")
  tmp.write_text(json.dumps(state, indent=1))
  tmp.replace(path)


def install(directory: pathlib.Path) -> dict[str, str]:
  """Writes bin/gcloud (this fake) under directory; returns env updates."""
  bin_dir = directory / "bin"
  bin_dir.mkdir(parents=True, exist_ok=True)
  shim = bin_dir / "gcloud"
  # -S: no site-packages to scan (the fake is standard library only).
  shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "
                  f"{shlex.quote(str(pathlib.Path(__file__).resolve()))} "
                  '"$@"\n')
  shim.chmod(0o755)
  state = directory / "gcloud_state.json"
  save(state, _empty_state())
  return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
          "FAKE_GCLOUD_STATE": str(state)}


def update(path: str | os.PathLike, **changes: Any) -> None:
  state = load(path)
  state.update(changes)
  save(path, state)


def preempt(path: str | os.PathLike, name: str) -> None:
  """What Google does to a spot TPU: PREEMPTED (its queued resource SUSPENDED)."""
  state = load(path)
  state["nodes"][name]["state"] = "PREEMPTED"
  for qr in state["queued"].values():
    if qr["node_id"] == name:
      qr["state"] = "SUSPENDED"
  save(path, state)


def put_object(path: str | os.PathLike, url: str) -> None:
  state = load(path)
  state["objects"].append(url)
  save(path, state)


class _Failure(Exception):
  def __init__(self, message: str, code: int = 1):
    super().__init__(message)
    self.code = code


def _node(state: dict[str, Any], name: str, zone: str) -> dict[str, Any]:
  node = state["nodes"].get(name)
  if node is None or node["zone"] != zone:
    raise _Failure(f"NOT_FOUND: Resource 'projects/p/locations/{zone}/nodes/"
                   f"{name}' was not found")
  return node


def _new_node(flags: dict[str, Any], queued: bool) -> dict[str, Any]:
  accelerator_type = flags.get("--accelerator-type", "v2-8")
  return {"zone": flags["--zone"], "state": "READY",
          "accelerator_type": accelerator_type,
          "version": flags.get("--version") or flags.get("--runtime-version"),
          "spot": bool(flags.get("--spot")), "queued": queued,
          "internal_ips": bool(flags.get("--internal-ips")),
          "network": flags.get("--network"),
          "subnetwork": flags.get("--subnetwork"),
          "service_account": flags.get("--service-account"),
          "labels": flags.get("--labels"),
          "workers": _workers(accelerator_type), "files": {}, "ssh": []}


def _workers_of(node: dict[str, Any], worker: str) -> list[int]:
  if worker == "all":
    return list(range(node["workers"]))
  try:
    chosen = [int(w) for w in worker.split(",")]
  except ValueError:
    raise _Failure(f"--worker={worker!r}: must be 'all' or worker indices",
                   2) from None
  if any(not 0 <= w < node["workers"] for w in chosen):
    raise _Failure(f"--worker={worker}: the TPU has {node['workers']} "
                   "workers")
  return chosen


def execute(state: dict[str, Any], command: tuple[str, ...],
            positionals: list[str], flags: dict[str, Any]) -> str:
  """Applies one parsed command to the state; returns its stdout."""
  verb = command[-1]
  zone = flags.get("--zone")
  if command[:3] == ("compute", "tpus", "tpu-vm"):
    name = positionals[0]
    if verb == "create":
      if name in state["nodes"]:
        raise _Failure(f"ALREADY_EXISTS: node {name} already exists")
      if state["stockouts"] > 0:
        state["stockouts"] -= 1
        raise _Failure("RESOURCE_EXHAUSTED: There is no more capacity in the "
                       f"zone \"{zone}\"; you can try in another zone")
      state["nodes"][name] = _new_node(flags, queued=False)
      return ""
    if verb == "ssh":
      name = name.split("@", 1)[-1]
    elif verb == "scp":
      name = next(_REMOTE_RE.match(p).group(1) for p in positionals
                  if _REMOTE_RE.match(p))
    node = _node(state, name, zone)
    if verb == "delete":
      del state["nodes"][name]
      return ""
    if verb == "describe":
      if flags.get("--format") == "value(state)":
        return node["state"] + "\n"
      return (f"acceleratorType: {node['accelerator_type']}\nname: {name}\n"
              f"state: {node['state']}\n")
    if node["state"] != "READY":
      raise _Failure(f"{verb} to {name}: the TPU is {node['state']}", 255)
    workers = _workers_of(node, flags.get("--worker", "0"))
    if verb == "scp":
      *sources, dest = positionals
      for source in sources:
        if not pathlib.Path(source).exists():
          raise _Failure(f"scp: {source}: No such file or directory")
      for w in workers:
        node["files"].setdefault(str(w), []).append(
            _REMOTE_RE.match(dest).group(2))
      return ""
    if "--command" not in flags:
      raise _Failure("interactive ssh is not supported by the fake", 2)
    script = flags["--command"]
    syntax = subprocess.run(["bash", "-n", "-c", script], capture_output=True,
                            text=True)
    if syntax.returncode:
      raise _Failure(f"bash: syntax error in --command: {syntax.stderr}", 2)
    if state.get("ssh_key_not_in_agent"):
      raise _Failure("SSHKeyNotInAgent: SSH Key is not present in the SSH agent. Please "
                     "run `ssh-add /root/.ssh/google_compute_engine` to add it, and try again.")
    if state["ssh_failures"] > 0:
      state["ssh_failures"] -= 1
      raise _Failure("ssh: connect to host port 22: Connection timed out", 255)
    for attempt in range(_SSH_RETRIES + 1):
      for w in workers:
        node["ssh"].append({"worker": w, "command": script})
      if state.get("ssh_drops", 0) <= 0 or state.get("ssh_drop_match", "") not in script:
        break
      state["ssh_drops"] -= 1   # the connection dropped after the command ran: retried
    failed = [(w, state.get("worker_exit", {}).get(str(w), 0)) for w in workers]
    failed = [(w, c) for w, c in failed if c]
    if failed and _version(state.get("sdk_version", "530.0.0")) >= (500, 0, 0):
      raise _Failure(f"worker {failed[0][0]}: command exited {failed[0][1]}", failed[0][1])
    return ""
  if command[:3] == ("compute", "tpus", "queued-resources"):
    name = positionals[0]
    qr = state["queued"].get(name)
    if verb == "create":
      if qr is not None:
        raise _Failure(f"ALREADY_EXISTS: queued resource {name} exists")
      if flags["--node-id"] in state["nodes"]:
        raise _Failure(f"ALREADY_EXISTS: node {flags['--node-id']} exists")
      state["queued"][name] = {"zone": zone, "state": "CREATING",
                               "node_id": flags["--node-id"], "flags": flags}
      return ""
    if qr is None or qr["zone"] != zone:
      raise _Failure(f"NOT_FOUND: queued resource {name} was not found")
    if verb == "describe":
      shown = qr["state"]   # CREATING and ACCEPTED are seen once each, then move on
      if qr["state"] in ("CREATING", "ACCEPTED"):
        qr["state"] = {"CREATING": "ACCEPTED", "ACCEPTED": "WAITING_FOR_RESOURCES"}[qr["state"]]
        if flags.get("--format") == "value(state.state)":
          return shown + "\n"
        return f"name: {name}\nstate:\n  state: {shown}\n"
      if qr["state"] == "WAITING_FOR_RESOURCES":
        if state["stockouts"] > 0:
          state["stockouts"] -= 1
        else:
          qr["state"] = "PROVISIONING"
      elif qr["state"] == "PROVISIONING":
        qr["state"] = "ACTIVE"
        state["nodes"][qr["node_id"]] = _new_node(qr["flags"], queued=True)
      if flags.get("--format") == "value(state.state)":
        return qr["state"] + "\n"
      return f"name: {name}\nstate:\n  state: {qr['state']}\n"
    if verb == "delete":
      node = state["nodes"].get(qr["node_id"])
      if node is not None and node["state"] == "READY" and not flags.get(
          "--force"):
        raise _Failure("FAILED_PRECONDITION: the queued resource has running "
                       "nodes: delete them first or pass --force")
      state["nodes"].pop(qr["node_id"], None)
      del state["queued"][name]
      return ""
  if command == ("version",):
    return json.dumps({"Google Cloud SDK": state.get("sdk_version", "530.0.0"),
                       "core": "2026.12.01"}) + "\n"
  if command == ("storage", "ls"):
    if state.get("storage_error"):
      raise _Failure(state["storage_error"])
    out = []
    for url in positionals:
      out += [o for o in state["objects"]
              if o == url or o.startswith(url.rstrip("/") + "/")]
    if not out:
      raise _Failure("One or more URLs matched no objects.")
    return "".join(o + "\n" for o in out)
  raise _Failure(f"not implemented in the fake: {command}", 2)


def main(argv: list[str]) -> int:
  path = os.environ["FAKE_GCLOUD_STATE"]
  state = load(path)
  state["calls"].append(argv)
  group = "gcloud." + ".".join(argv[:4])
  try:
    command, positionals, flags, _ = parse(argv)
    group = "gcloud." + ".".join(command)
    sys.stdout.write(execute(state, command, positionals, flags))
    code = 0
  except GrammarError as e:
    state["rejected"].append({"argv": argv, "error": str(e)})
    print(f"ERROR: ({group}) {e}", file=sys.stderr)
    code = 2
  except _Failure as e:
    print(f"ERROR: ({group}) {e}", file=sys.stderr)
    code = e.code
  save(path, state)
  return code


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
