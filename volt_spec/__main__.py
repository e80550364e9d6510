"""`python -m volt_spec` is `volt`."""

from .cli import main

main()
