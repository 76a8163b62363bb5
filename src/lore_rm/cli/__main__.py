"""``python -m lore_rm.cli`` (used by torchrun / accelerate launch)."""

from lore_rm.cli.main import main

main()
