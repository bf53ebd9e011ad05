import sys

from maas.cli import main

sys.exit(main())
