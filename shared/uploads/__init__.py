"""Parse and validate user-uploaded image data sets.

Three formats, one module each, over a shared core (core.py: DatasetError, Limits,
ParsedDataset and the checks every format makes):
- idx.py: MNIST-style IDX, an images file and an optional labels file, raw or gzipped;
- npz.py: one .npz with x, optional y and optional classes; also the stored form;
- images.py: one .zip of <class_name>/<image> entries.
dispatch.py's parse_upload picks the format from the file names.

Torch-free on purpose: the API image imports this, and it must stay small. Every rejection is a
DatasetError carrying the HTTP status to answer with and a one-line message that names the file
and says what was expected.

Checks come before reads, so memory stays bounded by the limits, not by what an upload claims:
1. the upload's size in bytes, as received (413);
2. declared sizes, before anything of that size is allocated or decompressed: IDX headers, zip
   and .npy headers, image headers (413 over a size limit, 400/422 when malformed);
3. the decoding itself, which stops at the declared size (gzip streams, zip entries);
4. the decoded content: shape, dtype, labels and class names (422).
"""

from shared.uploads.core import DEFAULT_LIMITS, DatasetError, Limits, ParsedDataset
from shared.uploads.dispatch import parse_upload
from shared.uploads.idx import parse_idx, write_idx
from shared.uploads.images import parse_zip
from shared.uploads.npz import from_npz_bytes, parse_npz, to_npz_bytes

__all__ = [
    "DEFAULT_LIMITS",
    "DatasetError",
    "Limits",
    "ParsedDataset",
    "from_npz_bytes",
    "parse_idx",
    "parse_npz",
    "parse_upload",
    "parse_zip",
    "to_npz_bytes",
    "write_idx",
]
