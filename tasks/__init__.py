"""Prefect tasks (installed as ``repint.tasks``): one unit of work on one chunk or one centre.
Layer 3: imports the core and ``repint.storage``, never ``repint.flows`` or ``repint.app``
(tests/test_layering.py)."""
