"""Training mechanics shared by MIL, VQA and pretraining: precision, model selection and early stopping, the
learning-rate schedule, layer-wise decay, and checkpoints that resume a run exactly."""
