"""Launch scripts (Cloud TPU: launch/tpu.py). Not part of the installed package."""
