"""The activation store: residual-stream activations in HDF5, written crash-safely batch by batch.

A store is the file `acts.h5` (`format = "interp-activations"`, `format_version = 2`),
readable with plain h5py. While a trace runs, it is a small index file plus one immutable
part file per committed batch in the folder beside it (`acts.h5.parts-<store id>/`); when the
trace completes, the parts are copied into one self-contained file and the folder goes. The
full layout is in docs/store.md.

Why parts: HDF5 does not survive a kill in the middle of an in-place update (a resize, a
variable-length string write, a metadata flush at close), and such a file may open but never
be appendable again. So no file that holds committed items is ever modified. Each batch is
built as an HDF5 image in memory, written to a temporary name with plain os calls, fsynced
and renamed into the parts folder; then the index (items table and the list of parts) is
rebuilt in memory and renamed over the old one: that rename is the commit. A kill at any
point leaves the old index and its parts untouched; leftovers (an orphan part, temporary
files) are removed by the next writer. Because HDF5 itself only ever writes to memory on this
path, a full disk is an ordinary OSError from `os.write` (one line for the user), never a
crash inside the library. Finishing copies the parts into a temporary file and renames it
over the index: the same rule, one level up.

This package: `reader` (`ActivationStore`: items, positions, one layer at a time), `writer`
(`StoreWriter`: crash-safe appends), `layout` (the format's fields and HDF5 images) and
`export` (views for other tools: TransformerLens-shaped caches, SAELens' cached-activation
datasets).
"""

from interp.store.layout import FORMAT, FORMAT_VERSION, ITEM_FIELDS, POSITION_FIELDS, ItemRecord
from interp.store.reader import ActivationStore
from interp.store.writer import StoreWriter

__all__ = ["FORMAT", "FORMAT_VERSION", "ITEM_FIELDS", "POSITION_FIELDS", "ActivationStore", "ItemRecord", "StoreWriter"]
