"""Test scaffolding that ships with the package: tiny checkpoints and tokenizers.

`make_tiny(family, out)` writes a tiny random checkpoint of a family's real transformers class
(`interp.testing.checkpoints`), built on a byte-level BPE trained in milliseconds
(`interp.testing.tokenizers`). Tests, the demo, the quickstart notebook and
`interp models make-tiny` use them; no production code path does.
"""

from interp.testing.checkpoints import FACTORIES, make_tiny

__all__ = ["FACTORIES", "make_tiny"]
