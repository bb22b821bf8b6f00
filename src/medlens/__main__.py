"""``python -m medlens``: the same CLI, e.g. for ``torchrun --nproc_per_node 2 -m medlens train ...``."""

from medlens.cli import app

app(prog_name="medlens")
