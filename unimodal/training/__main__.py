"""`python -m unimodal.training --config configs/tiny.yaml [key.path=value ...]`: see `unimodal.training.train`."""
from unimodal.training.train import main

raise SystemExit(main())
