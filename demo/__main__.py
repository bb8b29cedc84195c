"""Run the demo: `python -m demo` (what `make demo` does)."""

import sys

from demo.run import main

sys.exit(main())
