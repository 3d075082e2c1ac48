"""CLIP-Dissect (Oikarinen & Weng, ICLR 2023). So far only the similarity functions
(:mod:`methods.clip_dissect.similarity`); the registered method is not built yet (issue 14)."""
