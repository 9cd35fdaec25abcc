import sys

from fedalign.cli import main

sys.exit(main())
