"""``python -m metaorch ...`` is the ``metaorch`` command (what a Ray job runs when the image has no console script)."""

from metaorch.orchestrator.cli import main

main()
