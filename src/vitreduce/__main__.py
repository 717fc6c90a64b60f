import sys

from vitreduce.cli import main

sys.exit(main())
