import sys

from include.cli.main import main

sys.exit(main())
