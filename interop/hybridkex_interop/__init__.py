"""hybridkex-interop: the interop suite of hybridkex.

``hybridkex interop run`` runs hybridkex against real peers -- other hybridkex processes
on every backend, KEM, authentication mode, QKD source and integration; liboqs through its
npm WebAssembly build; stock OpenSSL; wireguard-go; an independent ETSI GS QKD 014 client --
and against a misbehaving network and KME, and writes the results as a matrix report
(``report.json``, ``report.md``, ``report.html``).
"""

from ._catalogue import all_cells, sections, select_cells
from ._model import Cell, CellResult, Outcome, Section
from ._proxy import Fault, FaultProxy, SilentServer
from ._report import RunInfo, write_reports
from ._runner import RunOptions, run_cells

__version__ = "0.1.0"

__all__ = [
    "Cell", "CellResult", "Outcome", "Section",
    "all_cells", "sections", "select_cells",
    "RunOptions", "run_cells", "RunInfo", "write_reports",
    "Fault", "FaultProxy", "SilentServer",
]
