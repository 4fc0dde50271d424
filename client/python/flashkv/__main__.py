"""`python3 -m flashkv ...`: see flashkv/cli.py."""

import sys

from .cli import main

sys.exit(main())
