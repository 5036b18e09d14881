import sys
from pathlib import Path

# The binding module lives one level up (python/asock.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
