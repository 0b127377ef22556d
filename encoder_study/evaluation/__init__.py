"""What a trained model is judged by: the metrics (``metrics``), one scoring of a run or of any
codes for every notebook (``scoring``), comparison at matched sparsity (``frontier``), each model's
learning rate chosen on validation (``rate_choice``), agreement of soft assignments
(``agreement``), recovery of known components (``ground_truth``) and the classical feature maps
the learned dictionaries are set beside (``baselines``)."""
