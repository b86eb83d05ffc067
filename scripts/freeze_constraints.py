"""Rewrite constraints.txt from the packages installed in this environment.

Run inside the project's venv after changing dependencies:
    .venv/bin/python scripts/freeze_constraints.py
Local version labels (``torch==2.13.0+cpu``) are dropped so that the same file serves CPU and GPU
machines; the editable mtilib itself is left out.
"""

import re
import subprocess
import sys
from pathlib import Path

HEADER = """# Exact pins of the environment the project is tested with (Python 3.11, CPU).
# Used as: pip install torch==2.13.0 -c constraints.txt -e '.[notebook,test,dev]'
# Regenerate: .venv/bin/python scripts/freeze_constraints.py
"""

frozen = subprocess.run(
    [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
).stdout.splitlines()
lines = [re.sub(r"\+[\w.]+$", "", line) for line in frozen if "==" in line and not line.startswith("mtilib")]
path = Path(__file__).resolve().parents[1] / "constraints.txt"
path.write_text(HEADER + "\n".join(sorted(lines, key=str.lower)) + "\n")
print(f"wrote {len(lines)} pins to {path}")
