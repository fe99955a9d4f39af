"""``python -m gradcheck`` is the ``gradcheck`` command."""
from .cli import main

raise SystemExit(main())
