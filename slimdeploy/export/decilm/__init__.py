"""Config and modeling code that the per-layer vLLM export copies into the checkpoint (`auto_map`).

These two files must stay self-contained (only torch and transformers imports, one relative import):
they run from the checkpoint directory, without slimdeploy installed.
"""
