import sys

from aioreconcile.cli import main

sys.exit(main())
