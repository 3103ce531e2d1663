"""The FID sample folder of sample_CoDe.py: its storage format (fid.samples) and the threads writing it
(fid.writer)."""
