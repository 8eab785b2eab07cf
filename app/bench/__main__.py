"""``python -m repint.app.bench``: the same as ``repint bench`` (and the ingest's memory children)."""

import sys

from repint.app.bench.main import main

if __name__ == "__main__":
    sys.exit(main())
