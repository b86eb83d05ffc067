"""Regenerate the diagrams in docs/DESIGN.md from the code: ``python scripts/design_diagrams.py``."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtilib.diagrams import update_design  # noqa: E402

if __name__ == "__main__":
    changed = update_design(ROOT / "docs" / "DESIGN.md")
    print("docs/DESIGN.md: diagrams " + ("updated" if changed else "already up to date"))
