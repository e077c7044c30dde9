"""Scoring CCTV frames: frame discovery and decoding, face detectors, face crop and
classification, the batched database scorer, file prediction and annotation."""
