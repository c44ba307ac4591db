"""``python -m bkdbench`` is the ``bkdbench`` console script."""
from bkdbench.cli import main

main()
