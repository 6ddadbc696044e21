"""Bind ``study``, ``trainables`` and ``analysis`` to the packages installed beside fishtune.

Each is loaded from ``<fishtune's parent folder>/<name>/__init__.py`` and put in
``sys.modules`` under its name, so every later ``import analysis.x`` (fishtune's own, Ray's
unpickling) finds fishtune's package whatever comes first on ``sys.path``. A same-named module
imported from elsewhere before fishtune cannot be replaced without breaking its users: that
is an ImportError naming both places.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SIBLINGS = ("trainables", "study", "analysis")
ROOT = Path(__file__).resolve().parent.parent


def load_siblings() -> None:
    for name in SIBLINGS:
        folder = ROOT / name
        loaded = sys.modules.get(name)
        if loaded is not None:
            where = Path(getattr(loaded, "__file__", None) or "?").resolve().parent
            if where != folder:
                raise ImportError(
                    f"a module {name!r} from {where} was imported before fishtune, whose own {name!r} is in "
                    f"{folder}; import fishtune first, or rename your folder"
                )
            continue
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"fishtune: no package {name!r} in {ROOT}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
