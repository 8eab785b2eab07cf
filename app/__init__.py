"""The application (installed as ``repint.app``): the ``repint`` command line (``repint.app.cli``) and
the performance suite (``repint.app.bench``). The top layer: it may import the core (``repint``),
``repint.storage``, ``repint.tasks`` and ``repint.flows``; nothing below imports it (tests/test_layering.py).
"""
