"""`python -m unimodal.evaluation --model DIR --suite NAME [...]`: see `unimodal.evaluation.run`."""
from unimodal.evaluation.run import main

raise SystemExit(main())
