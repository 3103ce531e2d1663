"""A miniature of the CoDe paper that runs offline on a CPU: a generated shapes data set, a VQVAE, a classifier,
a large and a small VAR, fine-tuned drafters and refiners, and their evaluation (see miniature/pipeline.py)."""
