"""``python -m spine_dfl`` (also what ``torchrun -m spine_dfl`` runs)."""

from spine_dfl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
