import sys

from packetscript_lab.cli import main

sys.exit(main())
