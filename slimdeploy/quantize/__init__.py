"""Post-training weight quantization (RTN, GPTQ) written as compressed-tensors checkpoints."""
