import sys

from vitreduce.cli.main import main

sys.exit(main())
