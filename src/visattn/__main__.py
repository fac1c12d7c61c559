import sys

from visattn.cli import main

sys.exit(main())
