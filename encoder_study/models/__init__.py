"""What is trained: the objective (``losses``), a run's configuration (``config``), the model
kinds (``kinds/``, one file each, and their registry), building a kind's single-run module
(``model``) and the stacked layout that trains many runs as one program (``stacking``)."""
