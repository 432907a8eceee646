import sys

from neo_async.cli import main

sys.exit(main())
