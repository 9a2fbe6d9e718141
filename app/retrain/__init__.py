"""Fine-tuning the model on the workspace in a background process."""
