from processor._cli import main

raise SystemExit(main())
