import sys

from benchmark.report.document import main

sys.exit(main())
