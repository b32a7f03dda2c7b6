"""Progress bars for long work: tqdm on stderr when stderr is a terminal.

`GENLAB_PROGRESS=0` hides every bar, `GENLAB_PROGRESS=1` shows them even when stderr is not a terminal (logs).
A function that takes `progress=None` follows this rule; True or False overrides it.
"""

from __future__ import annotations

import os
import sys


def enabled(flag: bool | None = None) -> bool:
    """Whether to draw a bar: `flag` when given, else $GENLAB_PROGRESS, else whether stderr is a terminal."""
    if flag is not None:
        return bool(flag)
    env = os.environ.get("GENLAB_PROGRESS", "")
    if env in ("0", "1"):
        return env == "1"
    return sys.stderr.isatty()


def bar(iterable=None, *, progress: bool | None = None, **kw):
    """`tqdm(iterable, **kw)`, disabled unless `enabled(progress)`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled(progress), dynamic_ncols=True, **kw)
