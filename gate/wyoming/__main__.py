from gate.wyoming.cli import main

raise SystemExit(main())
