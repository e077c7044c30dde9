import sys

from maskjob.cli import main

sys.exit(main())
