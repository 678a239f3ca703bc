"""``python -m hybridkex_interop._run_cell CELL_ID ...``: the process one cell runs in (see :mod:`._cell`)."""

import sys

from ._cell import main

sys.exit(main())
