"""``python -m cvm_rl.cli``: the ``cvm`` command."""

from cvm_rl.cli import main

raise SystemExit(main())
