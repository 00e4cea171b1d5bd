"""launch/gke.py: JobSet manifests checked offline against the vendored
JobSet CRD schema and the Kubernetes schemas (tests/gke_schema.py), and
broken ones rejected by the same checks."""

import hashlib
import pathlib
import re
import sys

import pytest
import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from launch import gke  # noqa: E402
import gke_schema  # noqa: E402  (tests/ is on sys.path under pytest)

IMAGE = "us-docker.pkg.dev/proj/repo/hcl-jax:v1"
COMMON = ["--image", IMAGE, "--config", "configs/paper.py:dataset=cifar10,method=hcl",
          "--workdir", "gs://bkt/runs/r1", "--data-dir", "gs://bkt/tfds", "--cluster", "c1",
          "--zone", "us-east5-a", "--project", "proj"]


def _dry_run(capsys, *argv) -> tuple[dict, list[str]]:
  assert gke.main([*argv, *COMMON, "--dry-run", "--", "--config.seed=3"]) == 0
  out = capsys.readouterr().out
  manifest_text, _, commands = out.partition("\n---\n")
  manifest = yaml.safe_load(manifest_text)
  return manifest, [l for l in commands.splitlines() if not l.startswith("#")]


def _all_errors(manifest: dict) -> list[str]:
  return gke_schema.jobset_errors(manifest) + gke_schema.pod_template_errors(manifest)


def test_the_vendored_crd_is_the_named_release():
  readme = (REPO_ROOT / "launch" / "schemas" / "README.md").read_text()
  digest = hashlib.sha256(gke_schema.CRD_PATH.read_bytes()).hexdigest()
  assert f"sha256 `{digest}`" in readme and "v0.12.0" in readme
  assert "Apache License" in (REPO_ROOT / "launch" / "schemas" / "LICENSE.jobset").read_text()


# Hand-worked from GKE's TPU tables: v5p-32 = 32 TensorCores = 16 chips,
# 2x2x4, 4 VMs of 4 chips; v6e-16 = 16 chips, 4x4, 4 VMs of 4 chips.
@pytest.mark.parametrize("accelerator, selector, pods, chips", [
    ("v5p-32", ("tpu-v5p-slice", "2x2x4"), 4, 4),
    ("v6e-16", ("tpu-v6e-slice", "4x4"), 4, 4),
    ("v5litepod-8", ("tpu-v5-lite-podslice", "2x4"), 1, 8),
])
def test_tpu_manifest_validates_and_holds_the_slice(capsys, accelerator, selector, pods, chips):
  manifest, commands = _dry_run(capsys, "--name", "hcl-r1", "--accelerator-type", accelerator)
  assert _all_errors(manifest) == []
  assert gke_schema.tpu_slice_errors(manifest) == []
  (job,) = manifest["spec"]["replicatedJobs"]
  spec = job["template"]["spec"]
  pod = spec["template"]["spec"]
  assert (spec["parallelism"], spec["completions"], spec["backoffLimit"]) == (pods, pods, 0)
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": selector[0],
                                 "cloud.google.com/gke-tpu-topology": selector[1]}
  (container,) = pod["containers"]
  assert container["resources"]["limits"] == {"google.com/tpu": chips}
  assert container["command"] == [
      "python", "-m", "hcl_jax.main", "--config", "configs/paper.py:dataset=cifar10,method=hcl",
      "--workdir", "gs://bkt/runs/r1", "--config.data_dir=gs://bkt/tfds", "--config.seed=3"]
  # Longer than a checkpoint save after SIGTERM (the trainer's is seconds to a minute).
  assert pod["terminationGracePeriodSeconds"] == 300
  assert commands == [
      "kubectl apply -f hcl-r1.jobset.yaml",
      "kubectl logs --follow --prefix --max-log-requests=64 "
      "--selector=jobset.sigs.k8s.io/jobset-name=hcl-r1 --all-containers",
      "kubectl delete jobset hcl-r1",
      f"xpk workload create --workload=hcl-r1 --cluster=c1 --tpu-type={accelerator} "
      f"--num-slices=1 --docker-image={IMAGE} '--command=python -m hcl_jax.main --config "
      "configs/paper.py:dataset=cifar10,method=hcl --workdir gs://bkt/runs/r1 "
      "--config.data_dir=gs://bkt/tfds --config.seed=3' --max-restarts=3 --zone=us-east5-a "
      "--project=proj"]


def test_gpu_manifest_validates_and_names_the_coordinator(capsys):
  manifest, commands = _dry_run(capsys, "--name", "g1", "--gpu", "nvidia-h100-80gb",
                                "--gpus-per-node", "8", "--nodes", "2")
  assert _all_errors(manifest) == []
  spec = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
  pod = spec["template"]["spec"]
  assert spec["parallelism"] == 2
  assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
  env = {e["name"]: e for e in pod["containers"][0]["env"]}
  # JobSet pod DNS: <jobset>-<replicated job>-<job index>-<pod index>.<jobset>.
  assert env["JAX_COORDINATOR_ADDRESS"]["value"] == "g1-slice-0-0.g1:1234"
  assert env["JAX_NUM_PROCESSES"]["value"] == "2"
  assert env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
      "metadata.annotations['batch.kubernetes.io/job-completion-index']")
  assert "--device-type=h100-80gb-8 --num-nodes=2" in commands[-1]


def test_failure_policy_restarts_on_75_and_disruption_fails_on_1():
  """The JobSet rules' patterns against the Job controller's messages
  (kubernetes pkg/controller/job: 'Container C for pod NS/P failed with exit
  code N matching FailJob rule at index I'), written out here by hand."""
  manifest = gke.jobset_manifest(name="r", image=IMAGE, where=gke.tpu_slice("v5p-32"),
                                 command=["python"], max_restarts=3, grace_seconds=300)
  pod_rules = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"]
  assert [r.get("onExitCodes", {}).get("values") for r in pod_rules["rules"]] == [[1], [75], None]
  assert pod_rules["rules"][2]["onPodConditions"] == [{"type": "DisruptionTarget",
                                                       "status": "True"}]

  def action(message):
    for rule in manifest["spec"]["failurePolicy"]["rules"]:
      if any(re.search(p, message) for p in rule["onJobFailureMessagePatterns"]):
        return rule["action"]
    return "RestartJobSet"   # the JobSet default, counted against maxRestarts

  pod = "for pod default/r-slice-0-1-x7k2q failed with"
  assert action(f"Container hcl-jax {pod} exit code 1 matching FailJob rule at index 0") == \
      "FailJobSet"
  assert action(f"Container hcl-jax {pod} exit code 75 matching FailJob rule at index 1") == \
      "RestartJobSetAndIgnoreMaxRestarts"
  assert action("Pod default/r-slice-0-1-x7k2q has condition DisruptionTarget matching FailJob "
                "rule at index 2") == "RestartJobSetAndIgnoreMaxRestarts"
  assert action("Job has reached the specified backoff limit") == "RestartJobSet"
  assert action(f"Container hcl-jax {pod} exit code 10 matching FailJob rule at index 10") == \
      "RestartJobSet"


def _mutated(path, value):
  """A valid v5p-32 manifest with the field at ``path`` set (or deleted: None)."""
  manifest = gke.jobset_manifest(name="r", image=IMAGE, where=gke.tpu_slice("v5p-32"),
                                 command=["python"], max_restarts=3, grace_seconds=300)
  target = manifest
  for key in path[:-1]:
    target = target[key]
  if value is None:
    del target[path[-1]]
  else:
    target[path[-1]] = value
  return manifest


_JOB = ("spec", "replicatedJobs", 0, "template", "spec")
_POD = (*_JOB, "template", "spec")


@pytest.mark.parametrize("path, value, check, message", [
    (("apiVersion",), "jobset.x-k8s.io/v1", "jobset", "not served by the JobSet CRD"),
    (("kind",), "Job", "jobset", "kind 'Job' is not 'JobSet'"),
    (("spec", "replicatedJobs", 0, "replicas"), "one", "jobset", "is not of type 'integer'"),
    (("spec", "failurePolicy", "rules", 0, "action"), "Restart", "jobset", "is not one of"),
    (("spec", "replicatedJob"), [], "jobset", "spec.replicatedJob: unknown field"),
    ((*_JOB, "backoffLimit"), "zero", "pod", "backoffLimit"),
    ((*_POD, "containers", 0, "imag"), "x", "pod", "imag"),
    ((*_POD, "nodeSelector", "cloud.google.com/gke-tpu-topology"), None, "tpu",
     "nodeSelector has no cloud.google.com/gke-tpu-topology"),
    ((*_POD, "nodeSelector", "cloud.google.com/gke-tpu-topology"), "2x2x2", "tpu",
     "topology 2x2x2 is 8 chips, the pods ask for 4 x 4"),
    ((*_POD, "hostNetwork"), None, "tpu", "not hostNetwork"),
    (("metadata", "annotations"), {}, "tpu", "exclusive-topology"),
])
def test_broken_manifests_are_rejected(path, value, check, message):
  manifest = _mutated(path, value)
  errors = {"jobset": gke_schema.jobset_errors, "pod": gke_schema.pod_template_errors,
            "tpu": gke_schema.tpu_slice_errors}[check](manifest)
  assert any(message in e for e in errors), errors


@pytest.mark.parametrize("argv, message", [
    (["--accelerator-type", "v3-8"], "GKE TPU node pools are"),
    (["--accelerator-type", "v5p-30"], "v5p sizes are"),
    (["--gpu", "nvidia-k80"], "--gpu 'nvidia-k80' is not one of"),
    (["--accelerator-type", "v5p-32", "--name", "Bad_Name"], "--name 'Bad_Name'"),
])
def test_bad_inputs_are_one_line_errors(capsys, argv, message):
  if "--name" not in argv:
    argv = ["--name", "r", *argv]
  assert gke.main([*argv, *COMMON, "--dry-run"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_writes_the_manifest_it_prints(tmp_path, capsys):
  path = tmp_path / "m.yaml"
  assert gke.main(["--name", "r", "--accelerator-type", "v6e-16", *COMMON,
                   "--manifest", str(path)]) == 0
  assert f"kubectl apply -f {path}" in capsys.readouterr().out
  written = yaml.safe_load(path.read_text())
  assert written == gke.jobset_manifest(
      name="r", image=IMAGE, where=gke.tpu_slice("v6e-16"),
      command=gke.train_command("configs/paper.py:dataset=cifar10,method=hcl",
                                "gs://bkt/runs/r1", "gs://bkt/tfds", []),
      max_restarts=3, grace_seconds=300)
