import sys

from softq.site import main

sys.exit(main())
