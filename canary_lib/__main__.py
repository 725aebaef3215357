from canary_lib.cli import main

raise SystemExit(main())
