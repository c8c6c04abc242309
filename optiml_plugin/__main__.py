import sys

from optiml_plugin.cli import main

sys.exit(main())
