"""The offline demo: a labelled face dataset and a CCTV inbox with synthesized masks on real faces."""
