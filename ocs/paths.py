"""Where the files shipped beside the code live (dictionaries, vendor profiles).

In a source checkout (and an editable install) they are under `conf/` at the top
of the tree; an installed package carries them in `<prefix>/share/ocsd/`
(setup.py's data files). `shipped("dictionaries/dictionary")` finds either.
"""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE_CONF = Path(__file__).resolve().parent.parent / "conf"
INSTALLED_CONF = Path(sys.prefix) / "share" / "ocsd"


def shipped(relative: str) -> Path:
    """The shipped file `relative` (to conf/), from the source tree if present."""
    for base in (SOURCE_CONF, INSTALLED_CONF):
        candidate = base / relative
        if candidate.exists():
            return candidate
    return SOURCE_CONF / relative  # the error that follows names the expected place
