from softq.book.build import main

raise SystemExit(main())
