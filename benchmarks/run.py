#!/usr/bin/env python
"""RepInt's performance suite, as a script: the same as ``repint bench`` (code in ``app/bench/``, ``repint.app.bench``).

    python benchmarks/run.py --quick        # a few minutes on 2 cores
    python benchmarks/run.py --only solver,signs --out /tmp/bench

See ``benchmarks/README.md``.
"""

import sys

from repint.app.bench import main

if __name__ == "__main__":
    sys.exit(main())
