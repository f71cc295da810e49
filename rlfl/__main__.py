"""``python -m rlfl`` runs the ``rlfl`` command (handy under ``torchrun -m rlfl``)."""

import sys

from rlfl.cli import main

sys.exit(main())
