"""HEP data streaming: ROOT, Parquet, CSV and JSON lines in chunks straight into a model.

    from phpo.data import Stream
    s = Stream(["sig.root", "bkg.root"], labels=[1, 0], tree="Events", chunk_size=50_000)
    for batch in s.batches(256, epoch=0):
        batch.x, batch.mask, batch.y          # float32 numpy arrays

Imports nothing of phpo but :mod:`phpo.schemas`; uproot, awkward and pyarrow are imported when
a file of their format is read (``pip install 'phpo[data]'``).
"""

from .chunks import MASKS, NORMALISATIONS, Chunk, Stream
from .errors import DataError
from .readers import FLAT, JAGGED, Reader, open_reader
from .specs import Specs, compute_specs, load_or_compute

__all__ = [
    "FLAT",
    "JAGGED",
    "MASKS",
    "NORMALISATIONS",
    "Chunk",
    "DataError",
    "Reader",
    "Specs",
    "Stream",
    "compute_specs",
    "load_or_compute",
    "open_reader",
]
