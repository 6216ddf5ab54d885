from pystatsd.cli import main

raise SystemExit(main())
