"""Fine-tuning editors for lmcompose: FT-L (constrained fine-tuning of MLP layers) and LoRA (peft)."""
