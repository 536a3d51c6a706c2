import sys

from softq.book.site import main

sys.exit(main())
