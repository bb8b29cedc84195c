"""`python -m modelarts_emulator`: the same as the `modelarts-emulator` command."""

import sys

from modelarts_emulator.cli import main

sys.exit(main())
