"""An nbdev export processor: one notebook may export several modules.

nbdev writes a notebook's `#| default_exp` module afresh, but appends the
cells marked `#| export NAME` to an existing NAME.py (nbdev issue #742): a
second `nbdev-export` would append them again. This processor, named in
pyproject.toml's `export_procs`, writes each such module afresh from its
cells, as nbdev writes a default module, and then hides those cells from
nbdev's own export; a module thus comes from one notebook only.
`nbdev-export` imports it, so the project root must be on the path: the
install step of the Makefile puts it there for `.venv` (a `minigpt-root.pth`);
elsewhere run `PYTHONPATH=. nbdev-export` from the root.
"""
from nbdev.config import get_config
from nbdev.maker import ModuleMaker

EXPORTS = ("export", "exporti", "exports")   # exporti: not in __all__


def target(cell) -> str | None:
    "The module a code cell exports to by name (`#| export NAME`), if any."
    for directive in EXPORTS:
        name = cell.directives_.get(directive, "").strip()
        if name: return name
    return None


class SeveralModules:
    "Write every `#| export NAME` module of a notebook afresh."
    def __init__(self, nb): self.nb = nb

    def begin(self):
        cells = [c for c in self.nb.cells
                 if c.cell_type == "code" and target(c)]
        lib_path = get_config().lib_path
        for name in dict.fromkeys(map(target, cells)):     # in order
            mine = [c for c in cells if target(c) == name]
            in_all = [c for c in mine if "exporti" not in c.directives_]
            ModuleMaker(dest=lib_path, name=name, nb_path=self.nb.path_,
                        is_new=True).make(mine, in_all, lib_path=lib_path)
        for c in cells: c.directives_["exportd"] = ""  # nbdev skips them
