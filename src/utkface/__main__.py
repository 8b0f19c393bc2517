"""`python -m utkface` is the same as the `utkface` command."""

from utkface.apps.cli import main

raise SystemExit(main())
