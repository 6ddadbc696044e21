"""fishtune's Python API: run a study, load its trials and curves, analyse it.

    import fishtune
    result = fishtune.run("studies/digits-quick.yaml")   # or a dict
    result.trials                                        # pandas DataFrame, one row per trial
    fishtune.load("digits-quick").curves                 # step-indexed curves, long format
    fishtune.analyze("digits-quick")["n_used"]           # the analysis report as a dict

The implementation lives in the top-level packages ``study``, ``trainables`` and ``analysis``.
A notebook folder with its own ``analysis/`` (or ``study/``) would shadow them by name, since
the working directory comes first on ``sys.path``; importing ``fishtune`` therefore loads
those three from fishtune's own install location (:mod:`fishtune._siblings`) before anything
else can. Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

from fishtune._siblings import load_siblings

load_siblings()

from fishtune.api import RunResult, StudyResults, analyze, load, run  # noqa: E402  (after the siblings)

__all__ = ["RunResult", "StudyResults", "analyze", "load", "run"]
