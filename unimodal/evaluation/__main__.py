"""`python -m unimodal.evaluation --model DIR --suite NAME [...]`: see `unimodal.evaluation.run`."""
from unimodal.extras import run_entry_point

raise SystemExit(run_entry_point("unimodal.evaluation.run"))
