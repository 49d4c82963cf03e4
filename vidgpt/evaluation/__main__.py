"""`python -m vidgpt.evaluation`: the vidgpt-eval command."""

from vidgpt.evaluation.cli import main

raise SystemExit(main())
