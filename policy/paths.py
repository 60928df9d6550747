"""Where the checkout's shipped files are found: the one place that knows the layout.

The packages run from a checkout (`scripts/setup` installs it editable), and `data/` (the
suite registry, the tokenizer we trained, small problem sets) sits beside them, outside any
package. `policy` reads its default tokenizer through here, and `prover.paths` builds on these
two names (`policy` cannot import `prover`); no other module counts parent folders itself.
"""

from __future__ import annotations

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
DATA_DIR = CHECKOUT / "data"
