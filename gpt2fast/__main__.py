"""``python -m gpt2fast``."""

import sys

from .cli import main

sys.exit(main())
