"""Make ``tests/`` importable so test modules can share ``dist_utils``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
