from svfrd.cli import main

raise SystemExit(main())
