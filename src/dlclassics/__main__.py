from dlclassics.cli import main

raise SystemExit(main())
