from expportrait_core.cli import main

raise SystemExit(main())
