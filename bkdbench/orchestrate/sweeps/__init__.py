"""``bkdbench sweep``: Optuna on Ray Tune. ``driver`` runs a sweep (search, then the final seeds);
``trial`` is what one search trial trains and reports, ``workers`` the same on several Ray Train
workers, ``packed`` K configurations in one trial; ``study`` is the Optuna side (storage, samplers,
the searcher); ``report`` shows what a sweep found."""
