"""Test and rehearsal tools, never imported by training: a GCS API emulator
(``gcs_emulator``), local multi-process pods (``pod``) and the pod rehearsal
(``pod_rehearsal``, run by ``python -m hcl_jax.rehearse_pod``)."""
