"""``python -m faceledger``: the same as the ``faceledger`` command."""

from faceledger.cli import main

main()
