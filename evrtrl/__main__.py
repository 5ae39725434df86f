import sys

from evrtrl.cli import main

sys.exit(main())
