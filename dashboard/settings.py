"""Where the app's data directory comes from: ``--data D`` after ``streamlit run app.py --``,
else the ``CALLWARD_DATA`` environment variable. The explicit argument wins."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from callward.paths import DATA_ENV, DATA_OPTIONS


def data_dir(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The data directory the app was started on, or None when none was given."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(*DATA_OPTIONS, dest="data", default=None)
    args, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    env = os.environ if environ is None else environ
    value = args.data or env.get(DATA_ENV) or None
    return Path(value).expanduser() if value else None
