"""Offline checks of a JobSet manifest: the vendored JobSet CRD's schema and
the Kubernetes schemas, as an API server would apply them before admitting it.

* ``jobset_errors``: apiVersion/kind must be a version the CRD serves, then
  the manifest against that version's ``openAPIV3Schema`` (jsonschema), and
  fields the schema does not know (an API server prunes them silently: a
  misspelt key would be lost without an error).
* ``pod_template_errors``: each replicated job's Job spec wrapped as a
  ``batch/v1`` Job, checked by kubernetes-validate (strict: unknown fields
  fail).
"""

import functools
import pathlib

import jsonschema
import kubernetes_validate
import yaml

CRD_PATH = (pathlib.Path(__file__).resolve().parents[1] / "launch" / "schemas" /
            "jobset.x-k8s.io_jobsets.yaml")
KUBERNETES_VERSION = "1.37.0"   # kubernetes-validate's newest schemas


@functools.lru_cache(maxsize=1)
def crd() -> dict:
  return yaml.safe_load(CRD_PATH.read_text())


def _served_schemas() -> dict[str, dict]:
  spec = crd()["spec"]
  return {f"{spec['group']}/{v['name']}": v["schema"]["openAPIV3Schema"]
          for v in spec["versions"] if v.get("served")}


def _unknown_fields(value, schema: dict, path: str) -> list[str]:
  """Keys the structural schema does not declare (pruned by the server)."""
  if isinstance(value, dict) and schema.get("type") == "object":
    if schema.get("x-kubernetes-preserve-unknown-fields"):
      return []
    if "properties" not in schema:   # a map: additionalProperties says its values
      extra = schema.get("additionalProperties")
      return [e for k, v in value.items()
              for e in (_unknown_fields(v, extra, f"{path}.{k}") if isinstance(extra, dict)
                        else [])]
    errors = []
    for key, item in value.items():
      if key not in schema["properties"]:
        errors.append(f"{path}.{key}: unknown field")
      else:
        errors += _unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    return errors
  if isinstance(value, list) and isinstance(schema.get("items"), dict):
    return [e for i, item in enumerate(value)
            for e in _unknown_fields(item, schema["items"], f"{path}[{i}]")]
  return []


def jobset_errors(manifest: dict) -> list[str]:
  schemas = _served_schemas()
  api_version = manifest.get("apiVersion")
  if api_version not in schemas:
    return [f"apiVersion {api_version!r} is not served by the JobSet CRD "
            f"(served: {', '.join(sorted(schemas))})"]
  kind = crd()["spec"]["names"]["kind"]
  if manifest.get("kind") != kind:
    return [f"kind {manifest.get('kind')!r} is not {kind!r}"]
  schema = schemas[api_version]
  validator = jsonschema.Draft4Validator(schema)
  errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(manifest)]
  return errors + _unknown_fields(manifest, schema, "")


def pod_template_errors(manifest: dict) -> list[str]:
  errors = []
  for job in manifest["spec"]["replicatedJobs"]:
    wrapped = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": f"{manifest['metadata']['name']}-{job['name']}"},
               "spec": job["template"]["spec"]}
    try:
      kubernetes_validate.validate(wrapped, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
      errors.append(f"{job['name']}: {'.'.join(map(str, e.path))}: {e.message}")
  return errors


def tpu_slice_errors(manifest: dict) -> list[str]:
  """What GKE needs of a multi-host TPU slice's JobSet beyond the schemas
  (GKE's TPU docs, xpk's manifests): both TPU node selectors, a topology
  whose chips are the pods' chips, the TPU toleration, host networking, one
  Job per slice without retries, the exclusive-topology annotation."""
  errors = []
  annotations = manifest["metadata"].get("annotations", {})
  if annotations.get("alpha.jobset.sigs.k8s.io/exclusive-topology") != \
      "cloud.google.com/gke-nodepool":
    errors.append("metadata.annotations: no exclusive-topology on cloud.google.com/gke-nodepool")
  for job in manifest["spec"]["replicatedJobs"]:
    spec = job["template"]["spec"]
    pod = spec["template"]["spec"]
    selector = pod.get("nodeSelector", {})
    for key in ("cloud.google.com/gke-tpu-accelerator", "cloud.google.com/gke-tpu-topology"):
      if key not in selector:
        errors.append(f"{job['name']}: nodeSelector has no {key}")
    if spec.get("parallelism") != spec.get("completions") or spec.get("backoffLimit") != 0:
      errors.append(f"{job['name']}: parallelism {spec.get('parallelism')} != completions "
                    f"{spec.get('completions')} or backoffLimit {spec.get('backoffLimit')} != 0")
    chips = [c["resources"]["limits"].get("google.com/tpu", 0) for c in pod["containers"]]
    topology = selector.get("cloud.google.com/gke-tpu-topology", "")
    if topology:
      product = 1
      for side in topology.split("x"):
        product *= int(side)
      if product != sum(chips) * spec.get("parallelism", 0):
        errors.append(f"{job['name']}: topology {topology} is {product} chips, the pods ask "
                      f"for {spec.get('parallelism')} x {sum(chips)}")
    if not any(t.get("key") == "google.com/tpu" for t in pod.get("tolerations", [])):
      errors.append(f"{job['name']}: no google.com/tpu toleration")
    if not pod.get("hostNetwork") or pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
      errors.append(f"{job['name']}: not hostNetwork with dnsPolicy ClusterFirstWithHostNet")
  return errors
