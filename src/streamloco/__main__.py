"""`python -m streamloco ...` runs the command line (what `scripts/submit_job.sh` submits)."""

from streamloco.cli import main

raise SystemExit(main())
