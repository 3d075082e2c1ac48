"""MILAN (Hernandez et al., ICLR 2022): natural-language descriptions of neurons."""
