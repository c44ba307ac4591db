"""The training core (torch only; never Ray, Optuna, typer or rich): ``train.train(spec)`` runs one
run top to bottom, ``packed.train_packed`` several students sharing one data stream, ``teachers``
caches frozen teachers by run id, ``evaluate`` turns logits into the leaderboard's metrics.

Import the modules themselves (``from bkdbench.training.train import train``): this package keeps no
re-exports, so importing one part never loads the others."""
