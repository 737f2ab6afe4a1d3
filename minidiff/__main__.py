"""`python -m minidiff train | sample | eval | bench`: see minidiff/cli.py."""

import sys

from .cli import main

sys.exit(main())
