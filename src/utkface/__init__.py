"""utkface: age and gender estimation from faces, trained on UTKFace.

Run `utkface --help` for the command line; the modules are listed in docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
