"""`python -m unimodal.evaluation --model DIR --suite NAME [...]`: see `unimodal.evaluation.run`."""
from unimodal.evaluation.run import main

result = main()
raise SystemExit(result if isinstance(result, int) else 0)  # main returns the metrics dict on success
