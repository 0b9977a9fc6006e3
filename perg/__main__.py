import sys

from perg.cli import main

sys.exit(main())
