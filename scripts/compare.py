"""The old path of `outlier-compare` (outlier_lab/commands/compare.py),
kept while the README's commands still use it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package, wherever it is installed
from outlier_lab.commands.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
