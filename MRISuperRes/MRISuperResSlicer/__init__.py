"""The Slicer side of MRISuperRes that needs MRML but not Qt: node ↔ core volume conversion, and running
the core in a child process from nodes. Importable with `slicer-core` from PyPI, so it is tested there;
`MRISuperRes.py` adds only the GUI on top."""
