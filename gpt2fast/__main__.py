"""``python -m gpt2fast``; a Ctrl-C while the modules import ends with one line and 130."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:
    print("\ngpt2fast: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
