"""``python -m rlfl`` runs the ``rlfl`` command (handy under ``torchrun -m rlfl``)."""

import sys

from rlfl.cli import main

if __name__ == "__main__":  # guarded: the BPE trainer's worker processes re-import this module (spawn)
    sys.exit(main())
