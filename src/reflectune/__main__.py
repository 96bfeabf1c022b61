import sys

from reflectune.cli import main

sys.exit(main())
