#!/usr/bin/env python3
"""GKE launcher: a JobSet for a TPU slice or a GPU node pool, as xpk makes.

  python launch/gke.py --name run1 --accelerator-type v5p-32 --image IMAGE \\
      --config configs/paper.py:dataset=cifar10,method=hcl --workdir gs://BUCKET/run1 \\
      [--data-dir gs://BUCKET/tfds] [--cluster C --zone Z --project P] [--apply] \\
      [-- --config.k=v ...]
  python launch/gke.py --name run1 --gpu nvidia-h100-80gb --gpus-per-node 8 --nodes 2 ...

Writes the JobSet manifest (``--manifest``, default ``NAME.jobset.yaml``) and
prints, one per line, the commands to apply it, follow its logs and delete
it with kubectl, and the equivalent ``xpk workload create`` line. With
``--apply`` it runs ``kubectl apply`` (the others are printed for later).
``--dry-run`` prints the manifest and the commands, and writes and runs
nothing.

What the manifest holds, and why (``jobset_manifest``):

* ``jobset.x-k8s.io/v1alpha2`` JobSet, one replicated job of one Job per
  slice; the exclusive-topology annotation puts each slice's Job alone on
  one node pool (a TPU slice is one node pool).
* The Job: parallelism = completions = VMs (hosts) of the slice, Indexed,
  ``backoffLimit: 0`` (one host's pod failing ends the Job: a replaced pod
  could not rejoin the others' running ``jax.distributed``).
* ``podFailurePolicy`` + the JobSet ``failurePolicy``: exit 1 (a config or
  run error, ``hcl_jax.run.guard``) fails the JobSet, since a retry fails the
  same way; exit 75 (SIGTERM: checkpoint saved) and a node disruption
  (``DisruptionTarget``: preemption, maintenance) restart the whole JobSet,
  which resumes from the workdir's checkpoint without counting against
  ``--max-restarts``; anything else restarts it up to ``--max-restarts``.
* TPU: nodeSelector ``cloud.google.com/gke-tpu-accelerator`` and
  ``cloud.google.com/gke-tpu-topology``, ``google.com/tpu`` limits (chips per
  VM) and its toleration; hostNetwork with ``ClusterFirstWithHostNet`` (TPU
  hosts talk over the node network, as in GKE's TPU examples). GKE injects
  ``TPU_WORKER_HOSTNAMES`` and ``TPU_WORKER_ID``, which
  ``hcl_jax.distributed`` reads.
* GPU: nodeSelector ``cloud.google.com/gke-accelerator``, ``nvidia.com/gpu``
  limits and toleration; ``JAX_COORDINATOR_ADDRESS`` (pod 0's DNS name:
  the JobSet's ``enableDNSHostnames``), ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID`` (the Job completion index).
* ``terminationGracePeriodSeconds`` (``--grace-seconds``, default 300) longer
  than the trainer's SIGTERM save, so GKE does not SIGKILL a saving pod.

Not tried on a real cluster here (no GKE access): the manifests are checked
offline against the vendored JobSet CRD schema and the Kubernetes schemas
(tests/test_gke.py), and their container command and environment are run as
local processes (tests/test_cluster_rehearsal.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))
from hcl_jax.run.files import EXIT_ERROR, EXIT_RETRYABLE  # noqa: E402
from launch.common import (  # noqa: E402
    check_matches, check_trainer_flags, parse_launcher_args, trainer_command, validate_gs_path)
from launch.topology import parse_accelerator_type  # noqa: E402

API_VERSION = "jobset.x-k8s.io/v1alpha2"
CONTAINER = "hcl-jax"
TPU_COORDINATOR_PORT = 8482   # jax's default on TPU (hcl_jax.distributed)
GPU_COORDINATOR_PORT = 1234
# The Job controller's message for a FailJob rule (k8s pkg/controller/job):
# "Container C for pod NS/P failed with exit code N matching FailJob rule at
# index I". The JobSet rules match it by exit code and rule index.
_POD_RULE_CONFIG, _POD_RULE_RETRYABLE, _POD_RULE_DISRUPTION = 0, 1, 2

# GKE's TPU node labels (cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus).
_GKE_TPU_ACCELERATOR = {"v4": "tpu-v4-podslice", "v5litepod": "tpu-v5-lite-podslice",
                        "v5p": "tpu-v5p-slice", "v6e": "tpu-v6e-slice"}
# Chips -> topology: 3-D tori (v4, v5p) and 2-D (v5e, v6e), the shapes GKE
# lists for each slice size.
_TOPOLOGY_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
                128: "4x4x8", 256: "4x8x8", 512: "8x8x8", 1024: "8x8x16",
                2048: "8x16x16", 4096: "16x16x16"}
_TOPOLOGY_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
                128: "8x16", 256: "16x16"}
# xpk's --device-type names for GPU node pools.
_XPK_GPU = {"nvidia-h100-80gb": "h100-80gb", "nvidia-h100-mega-80gb": "h100-mega-80gb",
            "nvidia-h200-141gb": "h200-141gb", "nvidia-a100-80gb": "a100-80gb"}
_NAME_RE = re.compile(r"^[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?$")
_IMAGE_RE = re.compile(r"^[a-z0-9][-a-z0-9._/:@]*$")


@dataclasses.dataclass(frozen=True)
class Slice:
  """What one slice (or GPU node group) of the JobSet asks for."""
  kind: str                   # "tpu" | "gpu"
  hosts: int                  # pods = VMs
  per_host: int               # TPU chips or GPUs per VM
  node_selector: dict
  resource: str               # google.com/tpu | nvidia.com/gpu
  xpk_device: list[str]       # xpk's flags for it


def tpu_slice(accelerator_type: str) -> Slice:
  """``v5p-32`` -> 4 VMs of 4 chips, tpu-v5p-slice, 2x2x4; ValueError if GKE has no such slice."""
  accel = parse_accelerator_type(accelerator_type)
  if accel.generation not in _GKE_TPU_ACCELERATOR:
    raise ValueError(f"accelerator type {accelerator_type!r}: GKE TPU node pools are "
                     f"{', '.join(sorted(_GKE_TPU_ACCELERATOR))} (v2/v3 only as TPU VMs: "
                     "launch/tpu.py).")
  table = _TOPOLOGY_3D if accel.generation in ("v4", "v5p") else _TOPOLOGY_2D
  if accel.chips not in table:
    raise ValueError(f"accelerator type {accelerator_type!r} ({accel.chips} chips): GKE "
                     f"topologies known here are for {sorted(table)} chips.")
  return Slice(kind="tpu", hosts=accel.hosts, per_host=accel.chips_per_host,
               node_selector={"cloud.google.com/gke-tpu-accelerator":
                              _GKE_TPU_ACCELERATOR[accel.generation],
                              "cloud.google.com/gke-tpu-topology": table[accel.chips]},
               resource="google.com/tpu",
               xpk_device=[f"--tpu-type={accelerator_type}", "--num-slices=1"])


def gpu_slice(gpu: str, gpus_per_node: int, nodes: int) -> Slice:
  if gpu not in _XPK_GPU:
    raise ValueError(f"--gpu {gpu!r} is not one of {', '.join(sorted(_XPK_GPU))}.")
  if gpus_per_node not in (1, 2, 4, 8) or nodes < 1:
    raise ValueError(f"--gpus-per-node {gpus_per_node} must be 1, 2, 4 or 8 and --nodes "
                     f"{nodes} >= 1.")
  return Slice(kind="gpu", hosts=nodes, per_host=gpus_per_node,
               node_selector={"cloud.google.com/gke-accelerator": gpu},
               resource="nvidia.com/gpu",
               xpk_device=[f"--device-type={_XPK_GPU[gpu]}-{gpus_per_node}",
                           f"--num-nodes={nodes}"])


def train_command(config: str, workdir: str, data_dir: str | None,
                  extra: Sequence[str]) -> list[str]:
  """The container's command: the image's python, from the project folder (its workdir)."""
  return trainer_command("python", config, workdir, data_dir, extra)


def _exit_code_rule(action: str, code: int) -> dict:
  return {"action": action,
          "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [code]}}


def _failed_by_pod_rule(index: int, code: int | None = None) -> str:
  exit_code = rf"exit code {code} " if code is not None else ""
  return rf"{exit_code}matching FailJob rule at index {index}\b"


def container_env(name: str, where: Slice) -> list[dict]:
  """The container's environment: what hcl_jax.distributed reads beyond
  what GKE injects (TPU) or the whole explicit cluster (GPU)."""
  env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
  if where.kind == "gpu":
    env += [
        # Pod 0 of the Job: <jobset>-<replicated job>-<job index>-<pod index>.<subdomain>,
        # the subdomain being the JobSet's name (network.enableDNSHostnames).
        {"name": "JAX_COORDINATOR_ADDRESS",
         "value": f"{name}-slice-0-0.{name}:{GPU_COORDINATOR_PORT}"},
        {"name": "JAX_NUM_PROCESSES", "value": str(where.hosts)},
        {"name": "JAX_PROCESS_ID", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
    ]
  return env


def jobset_manifest(*, name: str, image: str, where: Slice, command: Sequence[str],
                    max_restarts: int, grace_seconds: int) -> dict:
  """The JobSet, as a dict (kubectl takes it as YAML or JSON)."""
  tolerations = [{"key": where.resource, "operator": "Exists", "effect": "NoSchedule"}]
  port = TPU_COORDINATOR_PORT if where.kind == "tpu" else GPU_COORDINATOR_PORT
  pod_spec = {
      "restartPolicy": "Never",   # podFailurePolicy requires it
      "terminationGracePeriodSeconds": grace_seconds,
      "nodeSelector": dict(where.node_selector),
      "tolerations": tolerations,
      "containers": [{
          "name": CONTAINER,
          "image": image,
          "command": list(command),
          "env": container_env(name, where),
          "ports": [{"containerPort": port, "name": "coordinator"}],
          "resources": {"limits": {where.resource: where.per_host}},
      }],
  }
  if where.kind == "tpu":
    pod_spec.update(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")
  job_spec = {
      "parallelism": where.hosts,
      "completions": where.hosts,
      "completionMode": "Indexed",
      "backoffLimit": 0,
      "podFailurePolicy": {"rules": [
          _exit_code_rule("FailJob", EXIT_ERROR),           # _POD_RULE_CONFIG
          _exit_code_rule("FailJob", EXIT_RETRYABLE),       # _POD_RULE_RETRYABLE
          {"action": "FailJob",                             # _POD_RULE_DISRUPTION
           "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
      ]},
      "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
  }
  return {
      "apiVersion": API_VERSION,
      "kind": "JobSet",
      "metadata": {
          "name": name,
          "labels": {"app": name},
          "annotations": {
              # One slice's Job alone on one node pool (a TPU slice is a node pool).
              "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool",
          },
      },
      "spec": {
          "network": {"enableDNSHostnames": True},
          "failurePolicy": {
              "maxRestarts": max_restarts,
              "rules": [
                  {"name": "ConfigOrRunErrorFailsTheJobSet", "action": "FailJobSet",
                   "onJobFailureReasons": ["PodFailurePolicy"],
                   "onJobFailureMessagePatterns": [
                       _failed_by_pod_rule(_POD_RULE_CONFIG, EXIT_ERROR)]},
                  {"name": "PreemptedOrDisruptedRestarts",
                   "action": "RestartJobSetAndIgnoreMaxRestarts",
                   "onJobFailureReasons": ["PodFailurePolicy"],
                   "onJobFailureMessagePatterns": [
                       _failed_by_pod_rule(_POD_RULE_RETRYABLE, EXIT_RETRYABLE),
                       _failed_by_pod_rule(_POD_RULE_DISRUPTION)]},
                  # Anything else: RestartJobSet (the default), up to maxRestarts.
              ],
          },
          "replicatedJobs": [{
              "name": "slice",
              "replicas": 1,
              "template": {"spec": job_spec},
          }],
      },
  }


def commands(*, name: str, manifest_path: str, namespace: str | None, cluster: str | None,
             zone: str | None, project: str | None, image: str, where: Slice,
             command: Sequence[str], max_restarts: int) -> dict[str, list[str]]:
  """kubectl apply / logs / delete, and xpk's equivalent of the apply."""
  ns = [f"--namespace={namespace}"] if namespace else []
  xpk = ["xpk", "workload", "create", f"--workload={name}",
         f"--cluster={cluster or 'CLUSTER'}", *where.xpk_device,
         f"--docker-image={image}", f"--command={shlex.join(command)}",
         f"--max-restarts={max_restarts}"]
  xpk += [f"--zone={zone}"] if zone else []
  xpk += [f"--project={project}"] if project else []
  return {
      "apply": ["kubectl", "apply", *ns, "-f", manifest_path],
      "logs": ["kubectl", "logs", *ns, "--follow", "--prefix", "--max-log-requests=64",
               f"--selector=jobset.sigs.k8s.io/jobset-name={name}", "--all-containers"],
      "delete": ["kubectl", "delete", *ns, "jobset", name],
      "xpk": xpk,
  }


def to_yaml(manifest: dict) -> str:
  import yaml  # PyYAML, in requirements.txt
  return yaml.safe_dump(manifest, sort_keys=False)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="launch/gke.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", required=True, help="JobSet name (lowercase, <= 40 chars).")
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument("--accelerator-type", help="TPU slice, e.g. v5p-32, v6e-16.")
  where.add_argument("--gpu", help="GPU node pool accelerator, e.g. nvidia-h100-80gb.")
  parser.add_argument("--gpus-per-node", type=int, default=8)
  parser.add_argument("--nodes", type=int, default=1, help="GPU nodes (one pod each).")
  parser.add_argument("--image", required=True,
                      help="Container image with the project at its working directory "
                           "and its requirements (and jax[tpu] or jax[cuda]) installed.")
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True, help="gs://BUCKET/PATH")
  parser.add_argument("--data-dir")
  parser.add_argument("--max-restarts", type=int, default=3)
  parser.add_argument("--grace-seconds", type=int, default=300,
                      help="terminationGracePeriodSeconds: longer than a checkpoint save.")
  parser.add_argument("--manifest", help="Where to write it (default NAME.jobset.yaml).")
  parser.add_argument("--namespace")
  parser.add_argument("--cluster", help="For the xpk line.")
  parser.add_argument("--zone", help="For the xpk line.")
  parser.add_argument("--project", help="For the xpk line.")
  run = parser.add_mutually_exclusive_group()
  run.add_argument("--apply", action="store_true",
                   help="Run kubectl apply (else only print the commands).")
  run.add_argument("--dry-run", action="store_true",
                   help="Print the manifest and the commands; write and run nothing.")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args, extra = parse_launcher_args(build_parser(), argv)
  try:
    check_matches("--name", args.name, _NAME_RE, "1-40 lowercase letters, digits and "
                  "hyphens, starting with a letter (pod names add suffixes to it).")
    check_matches("--image", args.image, _IMAGE_RE, "not an image reference like "
                  "us-docker.pkg.dev/PROJECT/REPO/hcl-jax:TAG.")
    validate_gs_path("--workdir", args.workdir)
    if args.data_dir:
      validate_gs_path("--data-dir", args.data_dir)
    check_trainer_flags(extra)
    if args.max_restarts < 0 or args.grace_seconds < 30:
      raise ValueError(f"--max-restarts {args.max_restarts} must be >= 0 and --grace-seconds "
                       f"{args.grace_seconds} >= 30 (a checkpoint save).")
    where = (tpu_slice(args.accelerator_type) if args.accelerator_type
             else gpu_slice(args.gpu, args.gpus_per_node, args.nodes))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  command = train_command(args.config, args.workdir, args.data_dir, extra)
  manifest = jobset_manifest(name=args.name, image=args.image, where=where, command=command,
                             max_restarts=args.max_restarts, grace_seconds=args.grace_seconds)
  path = args.manifest or f"{args.name}.jobset.yaml"
  if args.dry_run:
    print(f"# {path} (not written: --dry-run)")
    print(to_yaml(manifest), end="")
    print("---")
  else:
    pathlib.Path(path).write_text(to_yaml(manifest))
  planned = commands(name=args.name, manifest_path=path, namespace=args.namespace,
                     cluster=args.cluster, zone=args.zone, project=args.project,
                     image=args.image, where=where, command=command,
                     max_restarts=args.max_restarts)
  print(f"# {'would write' if args.dry_run else 'wrote'} {path}: JobSet {args.name}, {where.hosts} pod(s) x {where.per_host} "
        f"{where.resource}")
  for key in ("apply", "logs", "delete"):
    print(shlex.join(planned[key]))
  print("# or, with xpk (it writes an equivalent JobSet):")
  print(shlex.join(planned["xpk"]))
  if args.apply:
    return subprocess.run(planned["apply"], check=False).returncode
  return 0


if __name__ == "__main__":
  sys.exit(main())
