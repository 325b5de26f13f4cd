import sys

from ricardo.cli import main

sys.exit(main())
