import sys

from bng_operator.cli import main

sys.exit(main())
