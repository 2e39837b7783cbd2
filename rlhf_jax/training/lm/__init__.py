"""Language-model training: pretraining and SFT."""
