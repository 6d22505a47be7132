from pai_fast.cli import main

raise SystemExit(main())
