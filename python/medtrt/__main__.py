import sys

from medtrt.cli import main

sys.exit(main())
