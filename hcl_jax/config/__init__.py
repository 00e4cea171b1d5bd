"""Configs: validation of every key before a run writes anything (``check``),
value checks (``values``) and the names a config may choose from
(``registry``). The config files themselves are ``configs/`` (schema:
``configs/base.py``)."""
