"""``python -m gpt2fast``."""

import sys

try:
    from .cli import main  # imports torch: a second or more
except KeyboardInterrupt:
    print("\ngpt2fast: interrupted", file=sys.stderr)
    sys.exit(130)  # 128 + SIGINT, as cli.EXIT_INTERRUPTED

sys.exit(main())
