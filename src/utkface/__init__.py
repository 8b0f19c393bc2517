"""utkface: age and gender estimation from faces, trained on UTKFace.

Run `utkface --help` for the command line; the subpackages, one per stage of the work
(runtime, data, models, evaluation, training, apps), are listed in docs/ARCHITECTURE.md.
`from utkface import Predictor` is the runtime's predictor, imported on first use.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Predictor":
        from utkface.runtime.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'utkface' has no attribute {name!r}")
