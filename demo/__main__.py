"""Run the demo: `python -m agent.demo` (what `make demo` does)."""

import sys

from agent.demo.run import main

sys.exit(main())
