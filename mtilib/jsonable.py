"""Plain Python values for JSON: the one converter that data sets, metrics and reports share.

Lowest layer (next to :mod:`mtilib.constants`): imports nothing of the package.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_ready(x: Any) -> Any:
    """Numpy scalars and arrays (nested in dicts, lists, tuples) as plain Python; dict keys as
    strings; NaN and ±inf as ``None`` (JSON has no such numbers: ``json.dumps`` would write invalid
    JSON)."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_ready(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if type(x).__name__ in ("NAType", "NaTType"):  # pandas' missing values, without importing pandas
        return None
    return x
